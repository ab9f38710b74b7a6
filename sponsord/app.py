"""``create_app(config)``: the daemon's aiohttp application, wired.

Data flows one way: upstream (Patreon) → refresher (roster, snapshot) → hub
→ clients. Background work lives in cleanup contexts that cancel *and await*
their tasks, so errors surface; live clients are closed in ``on_shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .config import Config
from .hub import ClientLimits, Hub
from .keys import ADDRESSES, CONFIG, EMBED_JS, HUB, LIMITS, METRICS, METRICS_ALLOW, REFRESHER, UPSTREAM
from .metrics import Metrics
from .openapi import routes as openapi_routes
from .patreon import TokenSource
from .proxies import ClientAddresses, parse_networks
from .refresher import Refresher
from .snapshot import SnapshotStore
from .upstream import Upstream
from .views import render_embed, routes
from .webhooks import routes as webhook_routes


def web_dir() -> Path:
    """Where the templates and static files are, installed or in a checkout."""
    try:
        return Path(str(resources.files("sponsord.web")))
    except ModuleNotFoundError:  # running from a source tree without installing
        return Path(__file__).resolve().parent.parent / "web"


def create_app(config: Config, *, tokens: TokenSource | None = None) -> web.Application:
    """Build the application for ``config``.

    tokens: where Patreon access tokens come from (default: the static
        ``PATREON_ACCESS_TOKEN``).
    """
    # aiohttp's keep-alive timer also runs while a request's headers are still
    # arriving: it is the header-read timeout that bounds a slowloris socket.
    app = web.Application(
        client_max_size=256 * 1024, handler_args={"keepalive_timeout": config.server.idle_timeout}
    )
    metrics = Metrics()
    hub = Hub(metrics, slow_timeout=config.server.slow_client_timeout)
    upstream = Upstream(config, metrics, tokens)
    refresher = Refresher(
        upstream.fetch,
        hub.publish,
        SnapshotStore(config.state.dir),
        config.patreon,
        config.display.goal_count,
        metrics,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[HUB] = hub
    app[UPSTREAM] = upstream
    app[REFRESHER] = refresher
    app[LIMITS] = ClientLimits(config.server.max_clients, config.server.max_clients_per_address)
    app[ADDRESSES] = ClientAddresses(config.server.trusted_proxies)
    app[METRICS_ALLOW] = tuple(parse_networks(config.server.metrics_allow))

    base = web_dir()
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(base / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    app[EMBED_JS] = render_embed(app)
    app.add_routes(routes)
    app.add_routes(webhook_routes)
    app.add_routes(openapi_routes)
    app.router.add_static("/static", base / "static", append_version=True)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_refresher_ctx)
    app.on_shutdown.append(_close_clients)
    return app


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    upstream = app[UPSTREAM]
    await upstream.open()
    yield
    await upstream.close()


async def _refresher_ctx(app: web.Application) -> AsyncIterator[None]:
    refresher = app[REFRESHER]
    # Serve the last snapshot at once, before Patreon answers.
    refresher.load()
    task = asyncio.create_task(refresher.run(), name="sponsord-refresher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_clients(app: web.Application) -> None:
    await app[HUB].close()
