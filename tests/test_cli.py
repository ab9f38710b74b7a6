"""The command line as a user runs it: real processes against the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from sponsord.simulator import Simulator

from .conftest import ACCESS_TOKEN, WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, api_base: str, campaign_id: str = "725055", port: int = 0) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
[patreon]
api_base = "{api_base}"
campaign_id = "{campaign_id}"
request_timeout = 3
[display]
goal_count = 9
[state]
dir = "{tmp_path / "state"}"
"""
    )
    return path


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``python -m sponsord`` while this event loop keeps serving the simulator."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sponsord",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": os.environ["PATH"], **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def sim_url(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> tuple[Simulator, str]:
    sim = Simulator.with_members(0)
    sim.campaign.add_member("Alice Able", start="2020-01-01T00:00:00+00:00", tier_ids=["9512103"])
    sim.campaign.add_member("Bob Hidden", hidden=True, start="2019-01-01T00:00:00+00:00")
    sim.campaign.add_member("Carol Former", status="former_patron")
    server = await aiohttp_server(sim.app)
    return sim, str(server.make_url("")).rstrip("/")


async def test_fetch_prints_the_supporter_table(sim_url: tuple[Simulator, str], tmp_path: Path) -> None:
    """`sponsord fetch` prints name-or-Anonymous, tier and since; exit 0."""
    _, url = sim_url
    code, out, err = await run_cli(
        "fetch", "--config", str(write_config(tmp_path, url)), env={"PATREON_ACCESS_TOKEN": ACCESS_TOKEN}
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SUPPORTER", "TIER", "SINCE"]
    assert lines[1].split() == ["Alice", "Able", "Loaf", "2020-01-01"]
    assert lines[2].startswith("Anonymous")
    assert "Bob" not in out and "Carol" not in out
    assert "2 supporters (3 members fetched)" in out


@pytest.mark.parametrize(
    ("token", "campaign", "expected"),
    [("wrong-token", "725055", "auth:"), (ACCESS_TOKEN, "999", "not_found:")],
)
async def test_fetch_errors_are_one_line(
    sim_url: tuple[Simulator, str], tmp_path: Path, token: str, campaign: str, expected: str
) -> None:
    """A refused token or a wrong campaign id: one line on stderr, exit 1, no traceback."""
    _, url = sim_url
    config = write_config(tmp_path, url, campaign_id=campaign)
    code, _out, err = await run_cli("fetch", "--config", str(config), env={"PATREON_ACCESS_TOKEN": token})
    assert code == 1
    assert err.strip().count("\n") == 0
    assert err.startswith(f"sponsord: {expected}")
    assert "Traceback" not in err
    assert token not in err


async def test_fetch_unreachable_api(tmp_path: Path) -> None:
    """An unreachable API is a clear one-line error and exit 1."""
    config = write_config(tmp_path, "http://127.0.0.1:9")
    code, _, err = await run_cli("fetch", "--config", str(config), env={"PATREON_ACCESS_TOKEN": "x"})
    assert code == 1
    assert err.startswith("sponsord: unavailable: cannot reach Patreon")


async def test_serve_logs_json_without_secrets_or_hidden_names(
    sim_url: tuple[Simulator, str], tmp_path: Path
) -> None:
    """`sponsord serve` logs JSON lines (not a tty) with no secret and no hidden name."""
    _sim, url = sim_url
    config = write_config(tmp_path, url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sponsord",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            "PATH": os.environ["PATH"],
            "PATREON_ACCESS_TOKEN": ACCESS_TOKEN,
            "PATREON_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("snapshot_published" in line for line in lines):
                lines.append((await proc.stdout.readline()).decode())
                assert lines[-1], "".join(lines)
    finally:
        proc.terminate()
        rest, _ = await asyncio.wait_for(proc.communicate(), 15)
    lines += rest.decode().splitlines()
    assert proc.returncode == 0
    events = [json.loads(line) for line in lines if line.strip()]
    assert {"listening", "snapshot_published", "stopped"} <= {e["event"] for e in events}
    text = "\n".join(lines)
    for forbidden in (ACCESS_TOKEN, WEBHOOK_SECRET, "Bob Hidden", "Alice Able"):
        assert forbidden not in text


def test_installed_package_finds_its_web_assets(tmp_path: Path) -> None:
    """`pip install .` (not editable) gives a package whose templates render from site-packages."""
    target = tmp_path / "site"
    build = tmp_path / "src"
    shutil.copytree(
        ROOT, build, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "tests")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(build),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    assert (target / "sponsord" / "web" / "templates" / "embed.js").is_file()
    assert (target / "bin" / "sponsord").is_file()
    probe = """
import asyncio, sponsord
from aiohttp.test_utils import TestClient, TestServer
from sponsord.app import create_app, web_dir
from sponsord.config import Config, PatreonConfig, ServerConfig
async def main():
    server = ServerConfig(public_url="https://api.example.com")
    cfg = Config(server=server, patreon=PatreonConfig(campaign_id="1"))
    async with TestClient(TestServer(create_app(cfg))) as c:
        r = await c.get("/embed.js")
        assert r.status == 200 and "https://api.example.com" in await r.text()
    print("RESULT", sponsord.__file__, web_dir())
asyncio.run(main())
"""
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": os.environ["PATH"]},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    _, module_file, web = result[-1].split()
    assert module_file.startswith(str(target))
    assert web.startswith(str(target))


async def test_watch_prints_each_new_version(
    sim_url: tuple[Simulator, str], aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path
) -> None:
    """`sponsord watch URL` prints the current state, then the next one after a change."""
    from sponsord.app import create_app
    from sponsord.config import load_config
    from sponsord.keys import HUB, REFRESHER

    sim, url = sim_url
    config = load_config(write_config(tmp_path, url), environ={"PATREON_ACCESS_TOKEN": ACCESS_TOKEN})
    app = create_app(config)
    server = await aiohttp_server(app)
    async with asyncio.timeout(10):
        while app[HUB].snapshot is None:
            await asyncio.sleep(0.01)
    watcher = asyncio.create_task(run_cli("watch", str(server.make_url("")), "--count", "2"))
    async with asyncio.timeout(20):
        while app[HUB].websocket_count == 0:
            await asyncio.sleep(0.02)
    sim.campaign.add_member("Dora Watched")
    await app[REFRESHER].refresh(fresh=True)
    code, out, err = await watcher
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert "version 1: 2 / 9 supporters" in lines[0]
    assert "version 2: 3 / 9 supporters" in lines[1]


async def test_demo_serves_live_changes(tmp_path: Path) -> None:
    """`sponsord demo` serves a simulated campaign whose changes arrive as new frames."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sponsord",
        "demo",
        "--port",
        str(port),
        "--interval",
        "0.3",
        "--state-dir",
        str(tmp_path / "demo-state"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={"PATH": os.environ["PATH"]},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(30):
            while True:
                try:
                    _, out = await asyncio.open_connection("127.0.0.1", port)
                    out.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        code, out, err = await run_cli("watch", url, "--count", "3", timeout=30)
        assert code == 0, err
        versions = [int(line.split("version ")[1].split(":")[0]) for line in out.splitlines()]
        assert len(versions) == 3
        assert versions == sorted(set(versions))
        assert (tmp_path / "demo-state" / "snapshot.json").is_file()
    finally:
        demo.terminate()
        assert await asyncio.wait_for(demo.wait(), 15) == 0


async def test_fetch_with_rotation_credentials_only(sim_url: tuple[Simulator, str], tmp_path: Path) -> None:
    """With only the OAuth client and refresh token, `fetch` rotates like serve and prints the table."""
    sim, url = sim_url
    env = {
        "PATREON_CLIENT_ID": sim.client_id,
        "PATREON_CLIENT_SECRET": sim.client_secret,
        "PATREON_REFRESH_TOKEN": sim.refresh_token or "",
    }
    code, out, err = await run_cli("fetch", "--config", str(write_config(tmp_path, url)), env=env)
    assert code == 0, err
    assert "2 supporters (3 members fetched)" in out
    assert sim.token_requests == 1
    assert (tmp_path / "state" / "patreon-tokens.json").is_file()
