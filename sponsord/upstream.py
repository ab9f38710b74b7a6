"""The Patreon side of the daemon: HTTP session, token source, budget, client.

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

#: Fewer connections than pages would serialize them anyway; Patreon pages are sequential.
CONNECTION_LIMIT = 4


class Upstream:
    """Owns everything needed to ask Patreon for the members."""

    def __init__(self, config: Config, metrics: Metrics, tokens: TokenSource | None = None) -> None:
        self.config = config
        self.metrics = metrics
        p = config.patreon
        # Short bursts for page runs, the configured rate on average.
        self.budget = TokenBucket(p.requests_per_minute, burst=10)
        if tokens is None:
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
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self.session is not None:
            await self.session.close()
        self.session = self.client = None

    async def fetch(self) -> list[Member]:
        """Every member of the campaign (see :meth:`PatreonClient.fetch_members`)."""
        if self.client is None:
            raise UpstreamUnavailable("the upstream is not open")
        before = self.client.requests
        try:
            return await self.client.fetch_members()
        finally:
            self.metrics.upstream_requests.inc(self.client.requests - before)
