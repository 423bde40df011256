"""`Backoff`: the one retry schedule of the project (the sink, the projector and the bridge).

Delays grow from `initial` by `factor` up to `cap`; each is spread by `jitter` (a delay `d` is
drawn uniformly from ``[d * (1 - jitter), d * (1 + jitter)]``) so that many clients retrying
the same server don't arrive together. With a `deadline` (seconds from the first failure),
:meth:`Backoff.next_delay` returns None once waiting would pass it: the caller gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with jitter, a cap and an optional deadline (module docstring)."""

    def __init__(
        self,
        initial: float,
        *,
        factor: float = 2.0,
        cap: float = 30.0,
        jitter: float = 0.0,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if initial <= 0 or factor < 1 or cap < initial or not 0 <= jitter < 1:
            raise ValueError("need initial > 0, factor >= 1, cap >= initial, 0 <= jitter < 1")
        if deadline is not None and deadline < 0:
            raise ValueError("deadline must be >= 0 seconds")
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.jitter = jitter
        self.deadline = deadline
        self._clock = clock
        self._delay = initial
        self._started: float | None = None
        self.failures = 0

    @property
    def current(self) -> float:
        """The delay (before jitter) the next wait will use."""
        return self._delay

    def reset(self) -> None:
        """Forget past failures: the next wait starts again from `initial`, the deadline anew."""
        self._delay = self.initial
        self._started = None
        self.failures = 0

    def next_delay(self) -> float | None:
        """Record a failure; the seconds to wait before the next try, or None to give up.

        None when `deadline` seconds have passed since the first failure (after the last
        `reset`), or would have passed by the end of the wait.
        """
        now = self._clock()
        if self._started is None:
            self._started = now
        self.failures += 1
        delay = self._delay
        if self.deadline is not None and now + delay > self._started + self.deadline:
            return None
        self._delay = min(delay * self.factor, self.cap)
        if self.jitter:
            delay *= 1 - self.jitter + 2 * self.jitter * random.random()
        return delay

    async def wait(self, stop: asyncio.Event | None = None) -> bool:
        """Sleep the next delay (waking early when `stop` is set); False when giving up."""
        delay = self.next_delay()
        if delay is None:
            return False
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return True
