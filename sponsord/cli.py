"""The command line: ``sponsord serve|demo|fetch|check-config``.

User errors (a bad config, Patreon refusing) print one line and exit
non-zero; no traceback. A bad config file exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import aiohttp
from aiohttp import web

from . import __version__
from .config import (
    Config,
    DisplayConfig,
    PatreonConfig,
    Secret,
    Secrets,
    ServerConfig,
    StateConfig,
    load_config,
)
from .errors import ConfigError, UpstreamError
from .logs import setup_logging
from .metrics import Metrics
from .patreon import Member
from .roster import build_supporters, counts, display_name, pledge_start
from .upstream import Upstream

EXIT_CONFIG = 2
EXIT_UPSTREAM = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sponsord", description="A live Patreon sponsor wall.")
    parser.add_argument("--version", action="version", version=f"sponsord {__version__}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the daemon"),
        ("fetch", "fetch once from Patreon and print the supporters"),
        ("check-config", "validate the configuration and exit"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, type=Path, help="path to config.toml")
    watch = sub.add_parser("watch", help="print each full_state a running daemon pushes (no browser needed)")
    watch.add_argument("url", nargs="?", default="http://127.0.0.1:8080", help="the daemon's base URL")
    watch.add_argument("--count", type=int, default=0, help="stop after this many frames (0: never)")
    demo = sub.add_parser("demo", help="run against a built-in simulated campaign")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--members", type=int, default=24, help="members the campaign starts with")
    demo.add_argument("--interval", type=float, default=4.0, help="mean seconds between roster changes")
    demo.add_argument("--state-dir", type=Path, help="keep the snapshot here (default: a temporary dir)")
    demo.add_argument("--seed", type=int, help="random seed, for a repeatable demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sponsord`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            config = load_config(args.config)
            _require_credentials(config)
            where = f"{config.server.host}:{config.server.port}"
            print(f"{args.config}: ok (campaign {config.patreon.campaign_id}, listening on {where})")
            return 0
        if args.command == "serve":
            config = load_config(args.config)
            _require_credentials(config)
            setup_logging(args.log_level)
            from .daemon import serve

            asyncio.run(serve(config))
            return 0
        if args.command == "fetch":
            config = load_config(args.config)
            _require_credentials(config)
            members = asyncio.run(fetch_members(config))
            print_table(members, sys.stdout)
            return 0
        if args.command == "watch":
            return asyncio.run(watch(args.url, args.count))
        setup_logging(args.log_level)
        asyncio.run(run_demo(args))
        return 0
    except ConfigError as exc:
        print(f"sponsord: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except UpstreamError as exc:
        print(f"sponsord: {exc.kind}: {exc}", file=sys.stderr)
        return EXIT_UPSTREAM
    except KeyboardInterrupt:
        return 130


def _require_credentials(config: Config) -> None:
    s = config.secrets
    if s.access_token is None and not s.can_rotate:
        raise ConfigError(
            "<environment>",
            "PATREON_ACCESS_TOKEN",
            "a creator access token (env var or $CREDENTIALS_DIRECTORY/patreon_access_token)",
        )


async def fetch_members(config: Config) -> list[Member]:
    """Fetch every member once, exactly as ``serve`` would (same tokens, budget, client)."""
    upstream = Upstream(config, Metrics(), tiers=True)
    await upstream.open()
    try:
        return await upstream.fetch()
    finally:
        await upstream.close()


def print_table(members: Sequence[Member], out: object) -> None:
    """The supporters, in display order: name (or Anonymous), tier, since."""
    shown = sorted(
        (m for m in members if counts(m)),
        key=lambda m: (display_name(m) is None, pledge_start(m), m.id),
    )
    rows = [
        (display_name(m) or "Anonymous", ", ".join(m.tiers) or "-", (m.pledge_relationship_start or "-")[:10])
        for m in shown
    ]
    header = ("SUPPORTER", "TIER", "SINCE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    write = out.write  # type: ignore[attr-defined]
    for row in [header, *rows]:
        write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    write(f"{len(build_supporters(members))} supporters ({len(members)} members fetched)\n")


async def watch(url: str, count: int) -> int:
    """Connect to ``/v1/supporters/websocket`` and print one line per frame."""
    ws_url = url.rstrip("/") + "/v1/supporters/websocket"
    seen = 0
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, heartbeat=30) as ws:
            async for msg in ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(msg.data)["data"]
                stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
                shown = len(data["supporters"])
                print(
                    f"{stamp} version {data['meta']['version']}: {shown} / {data['goal_count']} supporters",
                    flush=True,
                )
                seen += 1
                if count and seen >= count:
                    return 0
    except aiohttp.ClientError as exc:
        print(f"sponsord: cannot watch {ws_url}: {exc}", file=sys.stderr)
        return 1
    print(f"sponsord: {ws_url} closed the connection", file=sys.stderr)
    return 1


async def run_demo(args: argparse.Namespace) -> None:
    """``sponsord demo``: the daemon against a simulated campaign that keeps changing."""
    from .daemon import serve
    from .simulator import Simulator

    rng = random.Random(args.seed)
    sim = Simulator.with_members(args.members, seed=rng.randrange(2**32))
    api_base = await sim.start()
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="sponsord-demo-"))
    public_url = f"http://{args.host}:{args.port}"
    config = Config(
        server=ServerConfig(host=args.host, port=args.port, public_url=public_url, allowed_origins=("*",)),
        patreon=PatreonConfig(
            api_base=api_base,
            campaign_id=sim.campaign.id,
            poll_interval=60.0,
            webhook_cooldown=0.5,
            backoff_base=1.0,
            backoff_max=30.0,
            request_timeout=10.0,
        ),
        display=DisplayConfig(goal_count=40, join_url="https://www.patreon.com/"),
        state=StateConfig(dir=state_dir),
        secrets=Secrets(
            access_token=Secret(next(iter(sim.access_tokens))),
            webhook_secret=Secret(sim.webhook_secret),
        ),
        path="<demo>",
    )
    changes: list[asyncio.Task[None]] = []
    session = aiohttp.ClientSession()

    async def started(app: web.Application, url: str) -> None:
        hook = f"{url}/v1/webhooks/patreon"
        changes.append(asyncio.create_task(sim.run_changes(session, hook, args.interval, rng)))
        print(f"sponsord demo: open {public_url}/ (REST {public_url}/v1/supporters)", flush=True)

    try:
        await serve(config, on_started=started)
    finally:
        for task in changes:
            task.cancel()
        await asyncio.gather(*changes, return_exceptions=True)
        await session.close()
        await sim.stop()
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
