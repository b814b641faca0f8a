# SPDX-License-Identifier: AGPL-3.0-or-later
"""Bandwidth cap by pacing the sender.

Before each chunk of ``n`` bytes the pacer waits until the chunk may start:
over any run of N bytes the sender needs at least (N - chunk - burst) / rate
seconds, so the payload rate cannot exceed the cap.  Idle time is not banked
beyond ``burst_bytes``: after a pause the link does not get a flood.  The
engine paces at ``pacing_fraction`` (0.95) of the cap, leaving room for HTTP,
TLS and TCP/IP overhead on the wire.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    def __init__(self, rate_bytes_per_second: float | None, *, burst_bytes: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep):
        if rate_bytes_per_second is not None and rate_bytes_per_second <= 0:
            raise ValueError("rate must be positive or None")
        self.rate = rate_bytes_per_second
        self.burst = burst_bytes
        self.clock = clock
        self.sleep = sleep
        self._tat: float | None = None
        self.bytes_total = 0
        self.slept_total = 0.0

    @property
    def capped(self) -> bool:
        return self.rate is not None

    def delay_for(self, nbytes: int, now: float) -> float:
        """Seconds to wait before sending ``nbytes`` at ``now`` (and book them).

        A virtual clock (GCRA): ``_tat`` is when the link will have carried
        everything booked so far at the capped rate; a chunk may start once
        ``_tat`` is no more than ``burst / rate`` ahead of now."""
        self.bytes_total += nbytes
        if self.rate is None:
            return 0.0
        if self._tat is None or self._tat < now:
            self._tat = now                 # idle time is not banked
        d = max(0.0, self._tat - now - self.burst / self.rate)
        self._tat += nbytes / self.rate
        return d

    def wait(self, nbytes: int) -> float:
        """Block until ``nbytes`` may be sent; returns the seconds slept."""
        d = self.delay_for(nbytes, self.clock())
        if d > 0:
            self.sleep(d)
            self.slept_total += d
        return d


def mbit_to_bytes_per_second(mbit: float) -> float:
    return mbit * 1_000_000 / 8
