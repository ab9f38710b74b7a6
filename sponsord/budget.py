"""The upstream budget: a token bucket in front of every Patreon request.

Patreon allows 100 requests per minute per token and 100 per 2 s per client.
Whatever webhooks, timers and token rotations ask for, sponsord sends no more
than ``rate`` requests per minute, with bursts of at most ``burst``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """An async token bucket; :meth:`acquire` waits until a request may go.

    rate_per_minute: sustained requests per minute.
    burst: how many requests may go back to back after a quiet spell.
    clock: monotonic seconds (injected for tests).
    """

    def __init__(
        self,
        rate_per_minute: float,
        burst: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()
        #: requests let through so far (for tests and metrics)
        self.granted = 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def delay(self) -> float:
        """Seconds until one token is available (0 if one is there now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        """Take one token, waiting for it in FIFO order."""
        async with self._lock:
            while (wait := self.delay()) > 0:
                await asyncio.sleep(wait)
            self._tokens -= 1
            self.granted += 1
