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
    every queued study in turn and waits.

    Waiting out a long backoff after the link came back would leave studies
    queued for up to ``cap`` seconds: while backed off, a cheap probe is due
    every ``probe`` seconds (:meth:`probe_due`); when it answers, the caller
    ends the backoff (:meth:`succeeded`)."""

    def __init__(self, base: float, factor: float, cap: float, probe: float | None = None):
        self.base, self.factor, self.cap = base, factor, cap
        self.probe = probe
        self.failures = 0
        self.next_try = 0.0
        self.next_probe = 0.0
        self.last_error: str | None = None

    def failed(self, now: float, error: str) -> float:
        self.failures += 1
        self.last_error = error
        wait = delay(self.failures, self.base, self.factor, self.cap)
        self.next_try = now + wait
        if self.probe is not None:
            self.next_probe = now + min(self.probe, wait)
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.next_try = 0.0
        self.next_probe = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def probe_due(self, now: float) -> bool:
        """Backed off, and a probe may run now (the next one is then scheduled)."""
        if self.probe is None or self.ready(now) or now < self.next_probe:
            return False
        self.next_probe = now + self.probe
        return True

    def next_wake(self, now: float) -> float:
        """When the sender should look again: the end of the backoff or the next probe."""
        if self.probe is None:
            return self.next_try
        return min(self.next_try, max(now, self.next_probe))

    @property
    def up(self) -> bool:
        return self.failures == 0
