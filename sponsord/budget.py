"""The upstream budget: a token bucket in front of every Patreon request.

Patreon allows 100 requests per minute per token and 100 per 2 s per client.
Whatever webhooks, timers and token rotations ask for, sponsord sends no more
than ``rate`` requests per minute, with bursts of at most ``burst``.

A bucket alone allows ``burst + rate`` requests in the first minute after a
quiet spell (110 at ``rate`` 100). So every grant is also logged, and none is
made while the last 60 s (plus a second of slack) already hold ``floor(rate)`` of them: any 60-s window
stays at or below the configured rate, hence below Patreon's limits.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

#: The window Patreon's per-token limit is counted over.
WINDOW = 60.0

#: Requests spend a moment in flight and Patreon's clock is not ours: a second
#: of margin keeps two grants 60 s apart from landing in one of its windows.
SLACK = 1.0

#: Refill arithmetic in floats can leave a token short by 1e-14, a wait no
#: clock can measure; that close counts as whole.
EPSILON = 1e-9


class TokenBucket:
    """An async token bucket; :meth:`acquire` waits until a request may go.

    rate_per_minute: sustained requests per minute, and the most any 60-s
        window may hold (rounded down).
    burst: how many requests may go back to back after a quiet spell.
    clock: monotonic seconds (injected for tests).
    sleep: how to wait (injected for tests, with ``clock``).
    """

    def __init__(
        self,
        rate_per_minute: float,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_minute < 1 or burst < 1:
            raise ValueError("rate must be at least 1 per minute and burst at least 1")
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.window_limit = math.floor(rate_per_minute)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._recent: deque[float] = deque(maxlen=self.window_limit)
        self._lock = asyncio.Lock()
        #: requests let through so far (for tests and metrics)
        self.granted = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until a request may go (0 if one may go now)."""
        self._refill()
        wait = 0.0 if self._tokens >= 1 - EPSILON else (1 - self._tokens) / self.rate
        if len(self._recent) >= self.window_limit:
            wait = max(wait, self._recent[0] + WINDOW + SLACK - self._stamp)
        return wait if wait > EPSILON else 0.0

    async def acquire(self) -> None:
        """Take one token, waiting for it in FIFO order."""
        async with self._lock:
            while (wait := self.delay()) > 0:
                await self._sleep(wait)
            self._tokens = max(0.0, self._tokens - 1)
            self._recent.append(self._stamp)
            self.granted += 1
