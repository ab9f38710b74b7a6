"""Running the app: listen, wait for a signal, shut down gracefully.

On SIGTERM or SIGINT the site stops accepting, every WebSocket is closed with
1001 and every long-poll answered (``on_shutdown``), in-flight requests get
``SHUTDOWN_TIMEOUT`` seconds, background tasks are cancelled and awaited.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from .app import create_app
from .config import Config
from .patreon import TokenSource

log = structlog.get_logger(__name__)

#: Seconds in-flight requests get at shutdown; systemd's TimeoutStopSec is longer.
SHUTDOWN_TIMEOUT = 4.0

#: Thousands of pages reconnect at once after a restart; let the kernel queue them.
BACKLOG = 4096


async def serve(
    config: Config,
    *,
    tokens: TokenSource | None = None,
    on_started: Callable[[web.Application, str], Awaitable[None]] | None = None,
) -> None:
    """Serve ``config`` until SIGTERM/SIGINT.

    on_started: awaited once the socket listens, with the app and its URL
        (``sponsord demo`` starts its simulated campaign's changes there).
    """
    app = create_app(config, tokens=tokens)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(
            runner, config.server.host, config.server.port, backlog=BACKLOG, reuse_address=True
        )
        await site.start()
        url = _url(runner, config)
        log.info("listening", url=url, public_url=config.server.public_url)
        if on_started is not None:
            await on_started(app, url)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("stopped")


def _url(runner: web.AppRunner, config: Config) -> str:
    for address in runner.addresses:
        if isinstance(address, tuple | list) and len(address) >= 2:
            host = address[0]
            return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"
    return f"http://{config.server.host}:{config.server.port}"
