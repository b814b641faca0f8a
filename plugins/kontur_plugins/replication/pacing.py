# SPDX-License-Identifier: AGPL-3.0-or-later
"""Bandwidth cap by pacing the sender.

Before each chunk of ``n`` bytes, the pacer waits until the chunk's start
time: chunk k starts no earlier than (bytes before it) / rate seconds after the
pacer's reference point, so over any run the payload rate cannot exceed the
cap (plus at most one chunk of burst).  Idle time is not banked beyond
``burst_bytes``: after a pause the link does not get a flood.
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
        self._free_at = None  # when the link is free for the next byte
        self.bytes_total = 0
        self.slept_total = 0.0

    @property
    def capped(self) -> bool:
        return self.rate is not None

    def delay_for(self, nbytes: int, now: float) -> float:
        """Seconds to wait before sending ``nbytes`` at ``now`` (and book them)."""
        self.bytes_total += nbytes
        if self.rate is None:
            return 0.0
        credit = self.burst / self.rate
        if self._free_at is None or self._free_at < now - credit:
            self._free_at = now - credit
        start = max(now, self._free_at)
        self._free_at = start + nbytes / self.rate
        return start - now

    def wait(self, nbytes: int) -> float:
        """Block until ``nbytes`` may be sent; returns the seconds slept."""
        d = self.delay_for(nbytes, self.clock())
        if d > 0:
            self.sleep(d)
            self.slept_total += d
        return d


def mbit_to_bytes_per_second(mbit: float) -> float:
    return mbit * 1_000_000 / 8
