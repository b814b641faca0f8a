# SPDX-License-Identifier: AGPL-3.0-or-later
"""Retry delays: exponential, capped, never giving up.

Attempt 1 failed -> wait ``base``; attempt 2 -> ``base * factor``; ... capped
at ``cap``.  There is no maximum number of attempts: a study waits for as long
as the link is down (days for a mobile unit) and its age is visible.
"""
from __future__ import annotations


def delay(attempts: int, base: float, factor: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` consecutive failures (attempts >= 1)."""
    if attempts <= 0:
        return 0.0
    # avoid float overflow for very long outages
    exp = min(attempts - 1, 64)
    return float(min(cap, base * (factor ** exp)))


class LinkBackoff:
    """Backoff of the link as a whole: transport failures (connection refused,
    timeouts, 5xx) are the link's, not one study's, so the sender stops trying
    every queued study in turn and waits."""

    def __init__(self, base: float, factor: float, cap: float):
        self.base, self.factor, self.cap = base, factor, cap
        self.failures = 0
        self.next_try = 0.0
        self.last_error: str | None = None

    def failed(self, now: float, error: str) -> float:
        self.failures += 1
        self.last_error = error
        wait = delay(self.failures, self.base, self.factor, self.cap)
        self.next_try = now + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    @property
    def up(self) -> bool:
        return self.failures == 0
