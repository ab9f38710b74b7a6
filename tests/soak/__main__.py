"""``python -m tests.soak``: run the soak (``SOAK_SECONDS`` to shorten it)."""

from .soak import main

raise SystemExit(main())
