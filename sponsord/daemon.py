"""Running the app: listen, tell systemd, wait for a signal, shut down gracefully.

Start: the app starts (the persisted snapshot is loaded), the site listens on
the sockets systemd passed (socket activation) or on ``host:port``, and only
then ``READY=1`` goes to systemd. While running, ``WATCHDOG=1`` and a
``STATUS=`` line are sent from the event loop itself, so a stuck loop stops
the pings and systemd restarts the service.

On SIGTERM or SIGINT: ``STOPPING=1``; the site stops accepting (under socket
activation systemd keeps the listening socket and queues new connections for
the next start), every WebSocket is closed with 1001 and every long-poll
answered 503 (``on_shutdown``), in-flight requests get ``SHUTDOWN_TIMEOUT``
seconds, background tasks are cancelled and awaited. SIGHUP asks for a
refresh from Patreon now (``systemctl reload sponsord``).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import resource
import signal
import socket
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from .app import create_app
from .config import Config
from .errors import ConfigError
from .hub import CLOSE_ALL_TIMEOUT
from .keys import HUB, REFRESHER
from .patreon import TokenSource
from .sdnotify import Notifier, listen_sockets

log = structlog.get_logger(__name__)

#: Seconds in-flight requests get at shutdown. With the hub's close
#: (``CLOSE_ALL_TIMEOUT``) a stop takes at most ~7 s; the unit's TimeoutStopSec is 20.
SHUTDOWN_TIMEOUT = 4.0

#: The longest a graceful stop can take (the unit's TimeoutStopSec must exceed it).
STOP_BUDGET = SHUTDOWN_TIMEOUT + CLOSE_ALL_TIMEOUT

#: Thousands of pages reconnect at once after a restart; let the kernel queue them.
BACKLOG = 4096

#: Seconds between STATUS= updates when systemd asked for no watchdog.
STATUS_INTERVAL = 10.0

#: File descriptors needed besides one per live client (Patreon, state files, logs).
FD_HEADROOM = 256


async def serve(
    config: Config,
    *,
    tokens: TokenSource | None = None,
    on_started: Callable[[web.Application, str], Awaitable[None]] | None = None,
) -> None:
    """Serve ``config`` until SIGTERM/SIGINT.

    tokens: where Patreon access tokens come from (default: rotated when the
        OAuth credentials are configured, else the static access token).
    on_started: awaited once the socket listens, with the app and its URL
        (``sponsord demo`` starts its simulated campaign's changes there).
    """
    if not faulthandler.is_enabled():
        # The watchdog aborts a stuck loop with SIGABRT: print where every thread was.
        with contextlib.suppress(AttributeError, ValueError, OSError):
            faulthandler.enable()
    notifier = Notifier()
    inherited = listen_activated()
    raise_fd_limit(config.server.max_clients + FD_HEADROOM)
    app = create_app(config, tokens=tokens)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    keepalive: asyncio.Task[None] | None = None
    try:
        # The app's startup loads the persisted snapshot (refresher context).
        await runner.setup()
        loop.add_signal_handler(signal.SIGHUP, app[REFRESHER].poke)
        sites: list[web.BaseSite]
        if inherited:
            sites = [web.SockSite(runner, sock, backlog=BACKLOG) for sock in inherited]
        else:
            sites = [
                web.TCPSite(
                    runner, config.server.host, config.server.port, backlog=BACKLOG, reuse_address=True
                )
            ]
        for site in sites:
            await site.start()
        url = _url(runner, config)
        log.info(
            "listening",
            url=url,
            public_url=config.server.public_url,
            socket_activated=bool(inherited),
            addresses=[str(a) for a in runner.addresses],
        )
        if on_started is not None:
            await on_started(app, url)
        notifier.notify("READY=1", status_line(app))
        if notifier.enabled:
            keepalive = asyncio.create_task(_keepalive(notifier, app), name="sponsord-sd-notify")
        await stop.wait()
        notifier.notify("STOPPING=1", "STATUS=stopping: closing live clients")
        log.info("stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        # Watchdog pings go on during the stop: closing thousands of clients
        # must not look like a hung loop.
        await runner.cleanup()
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        notifier.close()
        log.info("stopped")


def listen_activated() -> list[socket.socket]:
    """The sockets systemd passed, as a :class:`ConfigError` if they are unusable."""
    try:
        return listen_sockets()
    except (ValueError, OSError) as exc:
        raise ConfigError(
            "<systemd socket unit>", "LISTEN_FDS", f"listening stream sockets ({exc})"
        ) from None


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit to the hard one; warn if ``wanted`` does not fit.

    Every live client holds a socket, and the usual soft limit (1024) would
    refuse clients long before ``max_clients``. Under the shipped unit the
    limit is set by ``LimitNOFILE=`` (and setrlimit is filtered out).
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except OSError:  # a seccomp filter that denies even reading it: nothing to do
        return
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open_files_limit_low",
            limit=soft,
            wanted=wanted,
            hint="raise LimitNOFILE= (systemd) or ulimit -n, or lower [server] max_clients",
        )


def status_line(app: web.Application) -> str:
    """``STATUS=`` for ``systemctl status``: version, age, upstream and clients."""
    hub = app[HUB]
    refresher = app[REFRESHER]
    snap = hub.snapshot
    if snap is None:
        shown = "no snapshot yet"
    else:
        age = refresher.age_seconds()
        fresh = f"refreshed {age:.0f}s ago" if age is not None else "from disk, not refreshed yet"
        shown = f"version {snap.version}, {len(snap.supporters)} supporters, {fresh}"
    h = refresher.health
    upstream = "ok" if h.ok else ("starting" if h.ok is None else f"failing ({h.consecutive_failures}x)")
    clients = f"{hub.websocket_count} websocket + {hub.waiters} long-poll clients"
    return f"STATUS={shown}; Patreon {upstream}; {clients}"


async def _keepalive(notifier: Notifier, app: web.Application) -> None:
    """WATCHDOG=1 (if systemd wants it) and STATUS=, from the event loop, until cancelled."""
    interval = notifier.watchdog_interval
    while True:
        lines = [status_line(app)] if not app[HUB].closing else []
        if interval is not None:
            lines.insert(0, "WATCHDOG=1")
        notifier.notify(*lines)
        await asyncio.sleep(interval if interval is not None else STATUS_INTERVAL)


def _url(runner: web.AppRunner, config: Config) -> str:
    for address in runner.addresses:
        if isinstance(address, tuple | list) and len(address) >= 2:
            host = address[0]
            return f"http://[{host}]:{address[1]}" if ":" in host else f"http://{host}:{address[1]}"
    return f"http://{config.server.host}:{config.server.port}"
