"""Webhook fuzzing on raw sockets: any body, header, encoding, length; no 5xx, no unsigned refresh."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sponsord.config import Config
from sponsord.keys import HUB
from sponsord.simulator import Simulator
from sponsord.webhooks import MAX_BODY, MEMBER_EVENTS, sign

from .conftest import WEBHOOK_SECRET
from .live import ThreadedStack, record_figures

MakeConfig = Callable[..., Config]

#: Statuses a webhook may answer (DESIGN.md): accepted, ignored, and client errors.
ALLOWED = {200, 202, 400, 401, 408, 411, 413, 414, 415, 417, 431}

SIGNATURES = ("valid", "valid-upper", "valid-padded", "other-body", "random", "absent", "non-ascii", "huge")
VALID = frozenset(SIGNATURES[:3])
EXTRA_HEADERS = (b"Content-Type", b"X-Forwarded-For", b"CF-Connecting-IP", b"Accept-Encoding", b"X-Junk")
FRAMINGS = ("length", "chunked", "gzip", "deflate", "bad-gzip", "bad-chunks", "short-length", "long-length")


@dataclass(frozen=True)
class Hook:
    """One generated webhook request: what the server will see, and how it is framed."""

    body: bytes
    framing: str
    signature: str
    event: bytes | None
    extra: tuple[tuple[bytes, bytes], ...]

    @property
    def broken(self) -> bool:
        """The framing or a header byte is wrong, so any client error (or a hang-up) is right."""
        values = [v for _, v in self.extra] + [self.event or b""]
        if self.signature == "non-ascii":
            values.append(b"\xe4")
        return self.framing in ("bad-gzip", "bad-chunks", "short-length", "long-length") or not all(
            map(printable, values)
        )

    def describe(self) -> str:
        """A short account of this case for a failure message (the body may be huge)."""
        return f"{self.framing} {self.signature} {len(self.body)}B event={self.event!r} {self.extra!r}"

    def wire(self) -> bytes:
        """The raw HTTP/1.1 request bytes."""
        sig = sign(WEBHOOK_SECRET, self.body)
        value = {
            "valid": sig.encode(),
            "valid-upper": sig.upper().encode(),
            "valid-padded": b"  " + sig.encode() + b" ",
            "other-body": sign(WEBHOOK_SECRET, self.body + b"!").encode(),
            "random": b"0123456789abcdef0123456789abcdef",
            "absent": None,
            "non-ascii": "ä".encode("latin-1") + sig.encode()[1:],
            "huge": b"f" * 8000,
        }[self.signature]
        headers = [(b"Host", b"127.0.0.1"), (b"Connection", b"close"), *self.extra]
        if value is not None:
            headers.append((b"X-Patreon-Signature", value))
        if self.event is not None:
            headers.append((b"X-Patreon-Event", self.event))
        payload = self.body
        if self.framing == "gzip":
            payload = gzip.compress(self.body)
            headers.append((b"Content-Encoding", b"gzip"))
        elif self.framing == "deflate":
            payload = zlib.compress(self.body)
            headers.append((b"Content-Encoding", b"deflate"))
        elif self.framing == "bad-gzip":
            payload = b"\x1f\x8b\x08\x00garbage" + self.body[:100]
            headers.append((b"Content-Encoding", b"gzip"))
        if self.framing in ("chunked", "bad-chunks"):
            headers.append((b"Transfer-Encoding", b"chunked"))
            chunks = [payload[i : i + 7000] for i in range(0, len(payload), 7000)]
            framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            if self.framing == "bad-chunks":
                framed = b"zz\r\n" + framed
        else:
            declared = len(payload)
            if self.framing == "short-length":
                declared = max(0, declared - 5)
            elif self.framing == "long-length":
                declared += 100
            headers.append((b"Content-Length", str(declared).encode()))
            framed = payload
        head = b"POST /v1/webhooks/patreon HTTP/1.1\r\n" + b"".join(
            k + b": " + v + b"\r\n" for k, v in headers
        )
        return head + b"\r\n" + framed

    def expected(self) -> int | None:
        """The one right status, or None when several are (broken framing)."""
        if self.broken:
            return None
        if len(self.body) > MAX_BODY:
            return 413
        if self.signature not in VALID:
            return 401
        return 202 if self.event is not None and self.event.decode("latin-1") in MEMBER_EVENTS else 200


def printable(value: bytes) -> bool:
    """Only visible ASCII, space and tab: what aiohttp's strict parser takes in a header value."""
    return all(0x20 <= b < 0x7F or b == 0x09 for b in value)


def encoded_json(doc: Any, codec: str) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode(codec, "replace")


header_value = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").strip())
bodies = st.one_of(
    st.binary(max_size=2000),
    st.builds(
        encoded_json,
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=30),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1"]),
    ),
    st.integers(MAX_BODY - 2, MAX_BODY + 2).map(lambda n: b"{" + b" " * (n - 2) + b"}"),
    st.just(b""),
)
hooks = st.builds(
    Hook,
    body=bodies,
    framing=st.sampled_from(FRAMINGS),
    signature=st.sampled_from(SIGNATURES),
    event=st.none()
    | st.sampled_from([*sorted(MEMBER_EVENTS), "posts:publish", "members:", ""]).map(str.encode)
    | header_value,
    extra=st.lists(
        st.tuples(
            st.sampled_from(
                [b"Content-Type", b"X-Forwarded-For", b"CF-Connecting-IP", b"Accept-Encoding", b"X-Junk"]
            ),
            header_value,
        ),
        max_size=3,
        unique_by=lambda h: h[0],  # a repeated singleton header is a 400 of its own
    ).map(tuple),
)


def exchange(url: str, data: bytes, *, half_close: bool = False, timeout: float = 5.0) -> list[int]:
    """Send raw bytes, read until the server closes; the status of each answer.

    half_close: end the stream after the bytes (a body shorter than promised
        ends there); asyncio closes the connection at EOF, so no answer is due.
    """
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer (413) and close before reading everything
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return [
        int(line.split()[1])
        for line in received.split(b"\r\n")
        if line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 "))
    ]


class Tally:
    """What the fuzz run saw."""

    def __init__(self) -> None:
        self.cases = 0
        self.statuses: dict[int, int] = {}
        self.accepted = 0
        self.hangups = 0

    def add(self, statuses: list[int]) -> None:
        self.cases += 1
        if not statuses:
            self.hangups += 1
        for s in statuses:
            self.statuses[s] = self.statuses.get(s, 0) + 1


FUZZ_SETTINGS = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.timeout(120)
def test_webhook_fuzz_never_5xx_never_unsigned_refresh(make_config: MakeConfig, tmp_path: Path) -> None:
    """Random raw webhooks: only documented 2xx/4xx, no Patreon request without a valid signature."""
    sim = Simulator.with_members(10, seed=9)
    unsigned, mixed = Tally(), Tally()
    with ThreadedStack(lambda base: make_config(base, webhook_cooldown=0.05), sim) as stack:
        assert stack.app is not None
        start_requests = sim.member_requests

        @FUZZ_SETTINGS
        @given(hook=hooks.filter(lambda h: h.signature not in VALID))
        def run_unsigned(hook: Hook) -> None:
            statuses = exchange(stack.url, hook.wire(), half_close=hook.framing == "long-length")
            unsigned.add(statuses)
            assert all(s in ALLOWED for s in statuses), (statuses, hook.framing)
            if hook.expected() is not None:
                assert statuses[:1] == [hook.expected()], (
                    statuses,
                    hook.framing,
                    hook.signature,
                    len(hook.body),
                    hook.event,
                    hook.extra,
                )

        run_unsigned()
        time.sleep(0.3)  # past the cooldown: a refresh would have started by now
        assert sim.member_requests == start_requests, "a refresh without a valid signature"

        @FUZZ_SETTINGS
        @given(hook=hooks)
        def run_mixed(hook: Hook) -> None:
            statuses = exchange(stack.url, hook.wire(), half_close=hook.framing == "long-length")
            mixed.add(statuses)
            assert all(s in ALLOWED for s in statuses), (statuses, hook.framing)
            if hook.expected() is not None:
                assert statuses[:1] == [hook.expected()], (
                    statuses,
                    hook.framing,
                    hook.signature,
                    len(hook.body),
                    hook.event,
                    hook.extra,
                )
            if 202 in statuses:
                assert hook.signature in VALID or hook.broken
                mixed.accepted += 1

        run_mixed()
        time.sleep(0.3)
        refreshes = sim.member_requests - start_requests
        assert refreshes <= mixed.accepted
        bomb = exchange(stack.url, gzip_bomb())
        assert bomb == [413]
        assert stack.app[HUB].snapshot is not None
    record_figures(
        "webhook_fuzz",
        {
            "cases": unsigned.cases + mixed.cases,
            "unsigned_cases": unsigned.cases,
            "statuses": {
                str(k): unsigned.statuses.get(k, 0) + mixed.statuses.get(k, 0)
                for k in sorted(unsigned.statuses.keys() | mixed.statuses.keys())
            },
            "hangups_on_broken_framing": unsigned.hangups + mixed.hangups,
            "accepted": mixed.accepted,
            "refreshes": refreshes,
            "gzip_bomb": "20 MB of zeros gzipped to 20 KB, answered 413",
        },
    )


def gzip_bomb() -> bytes:
    """A signed-looking webhook whose 20 KB gzip body inflates to 20 MB."""
    payload = gzip.compress(b"\0" * 20_000_000)
    return (
        b"POST /v1/webhooks/patreon HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Patreon-Signature: 00\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: %d\r\n\r\n" % len(payload)
    ) + payload
