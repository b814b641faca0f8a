# SPDX-License-Identifier: AGPL-3.0-or-later
"""Transfer windows: local wall-clock intervals in the region's time zone.

A window "20:00-07:00" crosses midnight: it is open from 20:00 to 24:00 and
from 00:00 to 07:00.  The start is inclusive, the end exclusive.  No windows
means always open.  Times are compared on the local wall clock, so a window
follows the region's clock through any change of UTC offset.
"""
from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence


def parse(window: str) -> tuple[int, int]:
    """'HH:MM-HH:MM' -> (start, end) in minutes after midnight."""
    start, end = window.split("-")
    h1, m1 = (int(x) for x in start.split(":"))
    h2, m2 = (int(x) for x in end.split(":"))
    return h1 * 60 + m1, h2 * 60 + m2


def _minute_open(minute: int, start: int, end: int) -> bool:
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end          # crosses midnight


def local_minute(now: float, tz: str) -> float:
    t = dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(tz))
    return t.hour * 60 + t.minute + t.second / 60 + t.microsecond / 60e6


def is_open(windows: Sequence[str], tz: str, now: float) -> bool:
    """Is any window open at the POSIX time ``now``?"""
    if not windows:
        return True
    minute = local_minute(now, tz)
    return any(_minute_open(int(minute), *parse(w)) for w in windows)


def seconds_until_open(windows: Sequence[str], tz: str, now: float) -> float:
    """0 if open now, else the real seconds until the next window opens.

    The wall clock gives the estimate; around a change of UTC offset the real
    wait differs (a window starting in the spring-forward gap opens at the
    jump), so the first open instant is searched near the estimate, to the
    second."""
    if is_open(windows, tz, now):
        return 0.0
    minute = local_minute(now, tz)
    best = 24 * 60.0
    for w in windows:
        start, _ = parse(w)
        delta = (start - minute) % (24 * 60)
        best = min(best, delta)
    estimate = now + best * 60
    t = max(now, estimate - _SEARCH)
    while t <= estimate + _SEARCH:
        if is_open(windows, tz, t):
            lo, hi = max(now, t - 60.0), t            # closed at lo (or lo is now), open at hi
            while hi - lo > 0.5:
                mid = (lo + hi) / 2
                if is_open(windows, tz, mid):
                    hi = mid
                else:
                    lo = mid
            return round(hi - now)
        t += 60.0
    return best * 60


#: how far from the wall-clock estimate the real opening may be (offset changes are at most 1 h)
_SEARCH = 2 * 3600.0


def describe(windows: Sequence[str], tz: str) -> str:
    return "always" if not windows else f"{', '.join(windows)} ({tz})"
