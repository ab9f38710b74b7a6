"""``python -m sponsord``."""

import sys

from .cli import main

sys.exit(main())
