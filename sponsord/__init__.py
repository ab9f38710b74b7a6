"""sponsord: a live Patreon sponsor wall."""

__version__ = "0.1.0"
