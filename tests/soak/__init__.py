"""The soak: thousands of live clients for minutes (``make soak``; not part of ``make test``)."""
