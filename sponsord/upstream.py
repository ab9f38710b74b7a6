"""The Patreon side of the daemon: HTTP session, token source, budget, client.

The token source is :class:`~sponsord.tokens.RotatingTokens` when the OAuth
client credentials and a refresh token are configured, else the static
``PATREON_ACCESS_TOKEN``.

Built with the app and opened by a cleanup context, so the refresher can be
wired at creation time while the network session only exists while running.
"""

from __future__ import annotations

import aiohttp

from .budget import TokenBucket
from .config import Config
from .errors import UpstreamUnavailable
from .metrics import Metrics
from .patreon import Member, PatreonClient, StaticToken, TokenSource
from .tokens import RotatingTokens

#: Fewer connections than pages would serialize them anyway; Patreon pages are sequential.
CONNECTION_LIMIT = 4


class Upstream:
    """Owns everything needed to ask Patreon for the members."""

    def __init__(
        self, config: Config, metrics: Metrics, tokens: TokenSource | None = None, *, tiers: bool = False
    ) -> None:
        self.config = config
        self.tiers = tiers
        self.metrics = metrics
        p = config.patreon
        # Short bursts for page runs, the configured rate on average.
        self.budget = TokenBucket(p.requests_per_minute, burst=10)
        if tokens is None:
            if config.secrets.can_rotate:
                # Rotations spend the same budget as member requests.
                tokens = RotatingTokens(config, self.budget, metrics)
            else:
                access = config.secrets.access_token
                tokens = StaticToken(access.reveal() if access else "")
        self.tokens = tokens
        self.session: aiohttp.ClientSession | None = None
        self.client: PatreonClient | None = None

    async def open(self) -> None:
        """Create the HTTP session and the client."""
        p = self.config.patreon
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT))
        self.client = PatreonClient(
            self.session,
            p.api_base,
            p.campaign_id,
            self.tokens,
            timeout=p.request_timeout,
            max_pages=p.max_pages,
            budget=self.budget,
            tiers=self.tiers,
        )

    async def close(self) -> None:
        """Close the HTTP session (the refresher has cancelled its fetch by then)."""
        if self.session is not None:
            await self.session.close()
        self.session = self.client = None

    async def fetch(self) -> list[Member]:
        """Every member of the campaign (see :meth:`PatreonClient.fetch_members`)."""
        client = self.client
        if client is None:
            raise UpstreamUnavailable("the upstream is not open")
        before = client.requests
        try:
            return await client.fetch_members()
        finally:
            self.metrics.upstream_requests.inc(client.requests - before)
