"""Server processes for the benchmark: start pinned, measure RSS, stop by PID.

Every server runs in its own process pinned to CPU 0; the benchmark process
(the client swarm and the simulated Patreon) pins itself to CPU 1. Only
processes started here are ever signalled, by their own PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER_CPU, SWARM_CPU = 0, 1


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def pin_self() -> str:
    """Pin this process to the swarm's CPU; describe what was done."""
    if os.cpu_count() is None or (os.cpu_count() or 1) < 2:
        return "not pinned (one CPU)"
    os.sched_setaffinity(0, {SWARM_CPU})
    return f"servers on CPU {SERVER_CPU}, swarm on CPU {SWARM_CPU}"


def raise_nofile(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB RAM"
    import aiohttp
    import websockets

    return {
        "cpu": f"{os.cpu_count()} x {model}",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "websockets": websockets.__version__,
    }


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_ns(pid: int) -> int:
    """Nanoseconds ``pid``'s main thread (the event loop) has run on a CPU."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _pin_child() -> None:
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {SERVER_CPU})


class Server:
    """One server process on ``port``, pinned to the server CPU."""

    def __init__(
        self, name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name, self.argv, self.port, self.log_path = name, argv, port, log
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        return rss_kib(self.pid)

    def cpu_ns(self) -> int:
        return cpu_ns(self.pid)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, preexec_fn=_pin_child
            )

    async def start(self, timeout: float = 30.0) -> None:
        self.proc = self._spawn()  # fork and exec: returns at once
        await wait_port(self.port, timeout, self.proc)

    async def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM this process (only it), wait for it; seconds it took."""
        began = time.perf_counter()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        return time.perf_counter() - began

    async def restart(self, timeout: float = 30.0) -> tuple[float, float]:
        """Stop and start again, as systemd would: (seconds to exit, seconds until listening).

        A thread waits for the exit and spawns the new process at once, so a
        busy event loop here (a reconnect storm) cannot delay the restart.
        """
        old = self.proc
        assert old is not None
        began = time.perf_counter()
        exited: list[float] = []

        def cycle() -> subprocess.Popen[bytes]:
            old.send_signal(signal.SIGTERM)
            old.wait(timeout)
            exited.append(time.perf_counter() - began)
            return self._spawn()

        self.proc = await asyncio.to_thread(cycle)
        await wait_port(self.port, timeout, self.proc)
        return exited[0], time.perf_counter() - began


async def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} (see bench-results/*.log)")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


def python() -> str:
    return sys.executable
