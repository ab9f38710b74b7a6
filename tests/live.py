"""A real ``sponsord serve`` process against the in-test simulator, and other live helpers.

- :func:`write_config` writes a ``config.toml`` for a real ``sponsord serve``.
- :func:`static_env` and :func:`rotating_env` are its secrets for the simulator.
- :class:`Daemon` runs that process (by default ``sponsord serve --config``),
  its output in a log file; it reads the JSON log lines, the URL it listens
  on, its RSS and open file descriptors (``/proc``) and stops or kills it
  (only it, by PID). :func:`running` is a started daemon as a context manager.
- :func:`get_json` and :func:`eventually` help the assertions.
- :class:`ThreadedStack` runs the simulator and the app in a background event
  loop, for synchronous drivers (hypothesis, schemathesis) that block.
- :func:`record_figures` keeps the figures the closing note reports in
  ``tests/artifacts/hostile.json`` (one key per test; ``docs/hostile.md``).

The simulator runs inside the test's event loop, so every wait here is
asynchronous: a blocking wait would stall the fake Patreon the daemon is
talking to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sponsord.app import create_app
from sponsord.config import Config
from sponsord.keys import HUB
from sponsord.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent
SPONSORD = str(Path(sys.executable).parent / "sponsord")
#: Figures of the last run (git-ignored); docs/hostile.md reports a run of them.
FIGURES = ROOT / "tests" / "artifacts" / "hostile.json"

TomlValue = str | int | float | bool | list[str]


def toml_value(value: TomlValue) -> str:
    """A Python value as TOML (strings, numbers, booleans, lists of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string for our values
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(
    directory: Path,
    api_base: str,
    *,
    campaign_id: str = "725055",
    server: Mapping[str, TomlValue] | None = None,
    patreon: Mapping[str, TomlValue] | None = None,
) -> Path:
    """A config.toml in ``directory``: a free loopback port, fast timers, state in ``directory/state``."""
    tables: dict[str, dict[str, TomlValue]] = {
        "server": {"host": "127.0.0.1", "port": 0, **(server or {})},
        "patreon": {
            "api_base": api_base,
            "campaign_id": campaign_id,
            "poll_interval": 3600,
            "webhook_cooldown": 0.1,
            "backoff_base": 0.2,
            "backoff_max": 1,
            "request_timeout": 3,
            "requests_per_minute": 100,
            **(patreon or {}),
        },
        "display": {"goal_count": 20},
        "state": {"dir": str(directory / "state")},
    }
    text = "".join(
        f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items()) + "\n"
        for name, table in tables.items()
    )
    path = directory / "config.toml"
    path.write_text(text)
    return path


def static_env(sim: Simulator) -> dict[str, str]:
    """Secrets for a daemon using the simulator's static access token."""
    return {
        "PATREON_ACCESS_TOKEN": next(iter(sim.access_tokens)),
        "PATREON_WEBHOOK_SECRET": sim.webhook_secret,
    }


def rotating_env(sim: Simulator, refresh_token: str | None = None) -> dict[str, str]:
    """Secrets for a daemon that rotates its tokens against the simulator."""
    refresh = refresh_token if refresh_token is not None else sim.refresh_token
    assert refresh is not None
    return {
        "PATREON_CLIENT_ID": sim.client_id,
        "PATREON_CLIENT_SECRET": sim.client_secret,
        "PATREON_REFRESH_TOKEN": refresh,
        "PATREON_WEBHOOK_SECRET": sim.webhook_secret,
    }


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test daemon: a minimal one, unbuffered, plus ``extra``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
    }


class Daemon:
    """One ``sponsord serve`` process, started at once; its output is in ``log_path``.

    env: extra environment (secrets, NOTIFY_SOCKET...), over :func:`daemon_env`.
    argv: the command (default ``sponsord serve --config <config>``).
    """

    def __init__(
        self,
        config: Path,
        env: Mapping[str, str] | None = None,
        *,
        argv: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path or config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv or [SPONSORD, "serve", "--config", str(config)],
            env=daemon_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.url: str | None = None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.proc.pid

    # -- its log ------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the daemon wrote (for assertion messages)."""
        return self.log_path.read_text(errors="replace")

    def _entries(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Each whole output line, and its JSON object (None when it is not one)."""
        running = self.proc.poll() is None
        text = self.log_text()
        if running:
            text = text[: text.rfind("\n") + 1]  # a line still being written is not one yet
        out: list[tuple[str, dict[str, Any] | None]] = []
        for raw in text.splitlines():
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            out.append((raw, obj if isinstance(obj, dict) else None))
        return out

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else is skipped)."""
        return [obj for _, obj in self._entries() if obj is not None]

    def errors(self) -> list[dict[str, Any]]:
        """Log lines at error level or above, and anything that is not a JSON log line."""
        return [
            obj if obj is not None else {"event": "raw", "level": "raw", "text": raw.rstrip()}
            for raw, obj in self._entries()
            if obj is None or obj.get("level") in ("error", "critical", "exception")
        ]

    async def started(self, timeout: float = 20.0) -> str:
        """Wait for the ``listening`` log line; the daemon's URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == "listening":
                    self.url = str(line["url"])
                    return self.url
            if self.proc.poll() is not None:
                raise AssertionError(f"sponsord exited with {self.proc.returncode}:\n{self.log_text()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"sponsord did not start in {timeout}s:\n{self.log_text()}")

    async def wait_for(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Wait for a log line with ``event`` (and ``fields``); return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event} {fields} in {timeout}s:\n{self.log_text()}")

    # -- its process (from /proc, by PID) -----------------------------------

    def rss_kib(self) -> int:
        """Resident set size, from /proc (KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def fd_count(self) -> int:
        """Open file descriptors, from /proc."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def exited(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the process to end; its exit status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() >= deadline:
                raise AssertionError(f"sponsord still running after {timeout}s:\n{self.log_text()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the daemon (by PID)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait (SIGKILL if it does not stop in time); its exit status."""
        self.signal(signal.SIGTERM)
        try:
            return await self.exited(timeout)
        except AssertionError:
            tail = self.log_text()[-2000:]
            print(f"sponsord did not stop in {timeout}s after SIGTERM; killing it:\n{tail}", file=sys.stderr)
            return await self.kill()
        finally:
            self.close()

    async def kill(self) -> int:
        """SIGKILL the daemon (by PID) and reap it; its exit status."""
        self.signal(signal.SIGKILL)
        try:
            return await self.exited(10)
        finally:
            self.close()

    def close(self) -> None:
        """Kill the process if it still runs and close the log."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


@contextlib.asynccontextmanager
async def running(config: Path, env: Mapping[str, str], **kwargs: Any) -> AsyncIterator[Daemon]:
    """A started daemon, stopped (by PID) on the way out."""
    daemon = Daemon(config, env, **kwargs)
    try:
        await daemon.started()
        yield daemon
    finally:
        daemon.close()


async def get_json(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    """GET ``url``: status and parsed JSON body (None when not JSON)."""
    async with session.get(url, **kwargs) as resp:
        body = await resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, None


async def eventually(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll an async or plain predicate until it is true (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met in {timeout}s")
        await asyncio.sleep(interval)


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
