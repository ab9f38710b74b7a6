"""Real processes and real sockets for the hostile-world tests (and the soak).

- :func:`write_config` writes a ``config.toml`` for a real ``sponsord serve``.
- :class:`Daemon` runs that process, finds its port in its JSON log, reads its
  RSS and open file descriptors from ``/proc`` and kills it (only it, by PID).
- :class:`ThreadedStack` runs the simulator and the app in a background event
  loop, for synchronous drivers (hypothesis, schemathesis) that block.
- :func:`record_figures` keeps the figures the closing note reports in
  ``tests/artifacts/hostile.json`` (one key per test; ``docs/hostile.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from aiohttp import web

from sponsord.app import create_app
from sponsord.config import Config
from sponsord.keys import HUB
from sponsord.simulator import Simulator

from .conftest import ACCESS_TOKEN, WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parent.parent
#: Figures of the last run (git-ignored); docs/hostile.md reports a run of them.
FIGURES = ROOT / "tests" / "artifacts" / "hostile.json"

TomlValue = str | int | float | bool | list[str]


def _toml(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a TOML basic string is a JSON string for our values


def write_config(
    directory: Path,
    api_base: str,
    *,
    server: Mapping[str, TomlValue] | None = None,
    patreon: Mapping[str, TomlValue] | None = None,
    campaign_id: str = "725055",
) -> Path:
    """A config.toml in ``directory`` (state in ``directory/state``, any free port)."""
    tables: dict[str, dict[str, TomlValue]] = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "patreon": {
            "api_base": api_base,
            "campaign_id": campaign_id,
            "poll_interval": 3600.0,
            "webhook_cooldown": 0.2,
            "backoff_base": 0.05,
            "backoff_max": 1.0,
            "request_timeout": 3.0,
            **(patreon or {}),
        },
        "display": {"goal_count": 20},
        "state": {"dir": str(directory / "state")},
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()) + "\n"
        for name, table in tables.items()
    )
    path = directory / "config.toml"
    path.write_text(text)
    return path


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test daemon: the simulator's secrets, unbuffered logs."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "PATREON_ACCESS_TOKEN": ACCESS_TOKEN,
        "PATREON_WEBHOOK_SECRET": WEBHOOK_SECRET,
        **(extra or {}),
    }


class Daemon:
    """One ``python -m sponsord serve`` process and its log (JSON lines)."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = daemon_env(env)
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.lines: list[dict[str, Any]] = []
        self._listening: asyncio.Future[str] | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, *, wait: bool = True, timeout: float = 15.0) -> Daemon:
        """Spawn the daemon; with ``wait``, return once it listens (``url`` set)."""
        self._listening = asyncio.get_running_loop().create_future()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sponsord",
            "serve",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            cwd=ROOT,
        )
        self._reader = asyncio.create_task(self._read())
        if wait:
            self.url = await asyncio.wait_for(asyncio.shield(self._listening), timeout)
            if not self.url:
                raise RuntimeError(f"daemon exited early: {self.lines[-5:]}")
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"event": "raw", "level": "raw", "text": line.decode(errors="replace").rstrip()}
            if not isinstance(entry, dict):
                entry = {"event": "raw", "level": "raw", "text": str(entry)}
            self.lines.append(entry)
            if entry.get("event") == "listening" and self._listening and not self._listening.done():
                self._listening.set_result(str(entry["url"]))
        if self._listening is not None and not self._listening.done():
            self._listening.set_result("")  # exited without listening (start() says so)

    def errors(self) -> list[dict[str, Any]]:
        """Log lines at error level or above, and anything that is not a JSON log line."""
        return [e for e in self.lines if e.get("level") in ("error", "critical", "exception", "raw")]

    def rss_kib(self) -> int:
        """Resident set size, from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fd_count(self) -> int:
        """Open file descriptors, from /proc."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def kill(self) -> int:
        """SIGKILL this process (by its PID) and reap it; its exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        code = await self.proc.wait()
        await self._drain()
        return code

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait (SIGKILL if it does not stop in time); its exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return await self.kill()
        await self._drain()
        return code

    async def _drain(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


class ThreadedStack:
    """The simulator and the app on loopback ports, run by an event loop in a thread.

    For synchronous drivers (hypothesis ``@given``, schemathesis) that block
    the calling thread. ``call(coro_fn)`` runs a coroutine function in the
    stack's loop and returns its result.
    """

    def __init__(self, make_config: Callable[[str], Config], sim: Simulator) -> None:
        self.sim = sim
        self._make_config = make_config
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="stack", daemon=True)
        self.app: web.Application | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> ThreadedStack:
        self._thread.start()
        self.call(self._start)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self._stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn()`` (a coroutine function) in the stack's loop; its result."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(fn(), self.loop)
        return future.result(timeout)

    async def _start(self) -> None:
        base = await self.sim.start()
        self.app = create_app(self._make_config(base))
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(10):
            while self.app[HUB].snapshot is None:
                await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.sim.stop()
        # A shielded fetch may outlive the refresher's task; end it before the loop closes.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def record_figures(name: str, figures: Mapping[str, Any]) -> None:
    """Print ``figures`` and keep them under ``name`` in tests/artifacts/hostile.json."""
    print(f"\n[figures] {name}: {json.dumps(figures, sort_keys=True)}", flush=True)
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        data = {}
    data[name] = dict(figures)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
