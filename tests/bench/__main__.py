"""``python -m tests.bench``: run the whole benchmark."""

from .run import main

raise SystemExit(main())
