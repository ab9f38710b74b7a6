"""Every error sponsord raises on purpose, in one tree.

::

    SponsordError
    ├── ConfigError            a config file or secret is missing or wrong (exit 2)
    └── UpstreamError          talking to Patreon failed; the snapshot is kept
        ├── AuthRejected       401/403: the token is wrong, expired or revoked
        ├── NotFound           404: no such campaign (or not this token's)
        ├── RateLimited        429: ``retry_after`` seconds before the next request
        ├── UpstreamUnavailable  connection refused/reset, timeout, 5xx
        ├── MalformedResponse  an answer that is not the JSON:API we asked for
        └── TokenRotationError the refresh token was refused or could not be kept

Errors are turned into exit codes (``cli.py``) and HTTP answers (``views.py``)
at the edge, never deep inside.
"""

from __future__ import annotations


class SponsordError(Exception):
    """Base of every error sponsord raises on purpose."""


class ConfigError(SponsordError):
    """A configuration file, key or secret is missing or invalid.

    ``str()`` is a single line naming the file, the key and what was expected,
    ready to print to an operator.
    """

    def __init__(self, path: str, key: str, expected: str) -> None:
        self.path = path
        self.key = key
        self.expected = expected
        super().__init__(f"{path}: {key}: {expected}")


class UpstreamError(SponsordError):
    """Fetching from Patreon failed. The last good snapshot stays served."""

    #: short machine-readable kind, used in /healthz and metrics labels
    kind = "upstream"


class AuthRejected(UpstreamError):
    """Patreon refused the credentials (401 or 403)."""

    kind = "auth"


class NotFound(UpstreamError):
    """Patreon answered 404: the campaign id is wrong or not this token's."""

    kind = "not_found"


class RateLimited(UpstreamError):
    """Patreon answered 429; no request may be sent for ``retry_after`` seconds."""

    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """Patreon could not be reached, timed out, or answered 5xx."""

    kind = "unavailable"


class MalformedResponse(UpstreamError):
    """Patreon answered, but not with the document we asked for."""

    kind = "malformed"


class TokenRotationError(UpstreamError):
    """The OAuth refresh token was refused, or the new pair could not be saved."""

    kind = "token_rotation"
