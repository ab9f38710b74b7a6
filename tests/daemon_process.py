"""Run ``sponsord serve`` as a real process for the end-to-end tests.

The simulator runs inside the test's event loop, so everything here waits
asynchronously: a blocking wait would stall the fake Patreon the daemon is
talking to. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from sponsord.simulator import Simulator

SPONSORD = str(Path(sys.executable).parent / "sponsord")


def toml_value(value: Any) -> str:
    """A Python value as TOML (strings, numbers, booleans, lists of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(
    directory: Path,
    api_base: str,
    *,
    campaign_id: str = "725055",
    server: Mapping[str, Any] | None = None,
    patreon: Mapping[str, Any] | None = None,
) -> Path:
    """A config.toml listening on a free loopback port, state in ``directory/state``."""
    sections: dict[str, dict[str, Any]] = {
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
        for name, table in sections.items()
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


class Daemon:
    """One ``sponsord serve`` process; its JSON log lines are in ``log_path``.

    argv: the command (default ``sponsord serve --config <config>``).
    env: extra environment (secrets, NOTIFY_SOCKET...), over a minimal one.
    """

    def __init__(
        self,
        config: Path,
        env: Mapping[str, str],
        *,
        argv: list[str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path or config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        base = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            argv or [SPONSORD, "serve", "--config", str(config)],
            env={**base, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url: str | None = None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else is skipped)."""
        out = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(raw)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def log_text(self) -> str:
        """Everything the daemon wrote (for assertion messages)."""
        return self.log_path.read_text(errors="replace")

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

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not go."""
        self.signal(signal.SIGTERM)
        try:
            return await self.exited(timeout)
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
