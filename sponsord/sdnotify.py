"""The two systemd protocols the daemon speaks, in plain Python (no libsystemd).

- **sd_notify** (``Type=notify``): datagrams like ``READY=1`` or
  ``WATCHDOG=1`` sent to the ``AF_UNIX`` socket named in ``$NOTIFY_SOCKET``; a
  name starting with ``@`` is in the abstract namespace. Without the variable
  (not under systemd) every call is a no-op, so the daemon runs the same way
  from a terminal.
- **Socket activation** (``sponsord.socket``): systemd passes listening sockets
  as file descriptors 3, 4, ... and says so in ``$LISTEN_FDS``, addressed to
  ``$LISTEN_PID``. See ``sd_notify(3)`` and ``sd_listen_fds(3)``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

import structlog

log = structlog.get_logger(__name__)

#: The first file descriptor systemd passes (after stdin, stdout, stderr).
LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; silent when it is unset.

    environ: where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
        are read (the process environment by default).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if name.startswith("@"):
            self.address = "\0" + name[1:]
        elif name.startswith("/"):
            self.address = name
        self.watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None without a watchdog."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; True if sent.

        Never raises: a lost notification must not take the service down (if
        READY or WATCHDOG is lost, systemd's own timeouts say so loudly).
        """
        if self.address is None or not lines:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc), message=lines[0].split("=", 1)[0])
            return False
        return True

    def close(self) -> None:
        """Close the socket (a later :meth:`notify` opens a new one)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` if it is meant for this process, else None."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # set for another process (we were forked or exec'd from it)
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed us, or [] when not socket-activated.

    Each descriptor becomes a ``socket.socket`` whose family and type are read
    from the descriptor itself (IPv4, IPv6 or Unix). Only stream sockets are
    accepted. ``LISTEN_*`` is removed from ``environ`` so that a child process
    does not believe the sockets are its own.
    """
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        if sock.type != socket.SOCK_STREAM:
            sock.detach()  # not ours to close: the socket unit is misconfigured
            raise ValueError(f"fd {fd} passed by systemd is not a stream socket (use ListenStream=)")
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
