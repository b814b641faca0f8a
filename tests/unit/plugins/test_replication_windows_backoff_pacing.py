"""Transfer windows in the region's time zone, retry backoff, pacing math."""
from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from kontur_plugins.replication import backoff, windows
from kontur_plugins.replication.pacing import Pacer

NOVOKUZNETSK = "Asia/Novokuznetsk"   # UTC+7, no DST


def at(tz: str, y, mo, d, h, mi) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=zoneinfo.ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize("hhmm,expected", [
    ((19, 59), False), ((20, 0), True), ((23, 59), True), ((0, 0), True), ((6, 59), True), ((7, 0), False),
    ((12, 0), False),
])
def test_window_across_midnight(hhmm, expected):
    assert windows.is_open(["20:00-07:00"], NOVOKUZNETSK, at(NOVOKUZNETSK, 2025, 3, 1, *hhmm)) is expected


def test_window_same_day_and_several_windows():
    w = ["12:00-13:00", "22:00-02:00"]
    tz = NOVOKUZNETSK
    assert windows.is_open(w, tz, at(tz, 2025, 3, 1, 12, 30))
    assert not windows.is_open(w, tz, at(tz, 2025, 3, 1, 13, 0))
    assert windows.is_open(w, tz, at(tz, 2025, 3, 1, 1, 59))
    assert not windows.is_open(w, tz, at(tz, 2025, 3, 1, 2, 0))


def test_no_windows_means_always():
    assert windows.is_open([], NOVOKUZNETSK, 0)
    assert windows.seconds_until_open([], NOVOKUZNETSK, 0) == 0


def test_windows_follow_the_region_clock_not_utc():
    # 20:30 in Novokuznetsk is 13:30 UTC; in Moscow that instant is 16:30
    t = dt.datetime(2025, 3, 1, 13, 30, tzinfo=dt.timezone.utc).timestamp()
    assert windows.is_open(["20:00-07:00"], NOVOKUZNETSK, t)
    assert not windows.is_open(["20:00-07:00"], "Europe/Moscow", t)


def _open_seconds(w, tz, start: float, end: float, step: float = 60.0) -> float:
    """Real seconds the windows are open in [start, end), sampled every ``step``."""
    n, t = 0, start
    while t < end:
        n += windows.is_open(w, tz, t)
        t += step
    return n * step


def test_window_in_the_spring_forward_gap():
    # Berlin, 2025-03-30: 02:00 CET jumps to 03:00 CEST; 02:00-02:59 never happens that night
    tz = "Europe/Berlin"
    before = at(tz, 2025, 3, 30, 1, 50)                     # 00:50 UTC
    jump = dt.datetime(2025, 3, 30, 1, 0, tzinfo=dt.timezone.utc).timestamp()    # 03:00 CEST
    w = ["02:30-04:00"]
    assert not windows.is_open(w, tz, before)
    assert windows.is_open(w, tz, jump)                     # the wall clock is already past 02:30
    # the window opens at the jump, 10 real minutes later -- not 40 (02:30 - 01:50 on the wall clock)
    assert windows.seconds_until_open(w, tz, before) == pytest.approx(600, abs=1)
    # that night it is open 1 real hour (03:00-04:00 CEST), not the 1 h 30 min it spans on paper
    assert _open_seconds(w, tz, before, before + 6 * 3600) == pytest.approx(3600, abs=60)


def test_window_in_the_fall_back_overlap():
    # Berlin, 2025-10-26: 03:00 CEST falls back to 02:00 CET; 02:00-02:59 happens twice
    tz = "Europe/Berlin"
    w = ["02:00-03:00"]
    first = dt.datetime(2025, 10, 26, 0, 30, tzinfo=dt.timezone.utc).timestamp()     # 02:30 CEST
    second = dt.datetime(2025, 10, 26, 1, 30, tzinfo=dt.timezone.utc).timestamp()    # 02:30 CET
    assert windows.is_open(w, tz, first) and windows.is_open(w, tz, second)
    after = dt.datetime(2025, 10, 26, 2, 0, tzinfo=dt.timezone.utc).timestamp()      # 03:00 CET
    assert not windows.is_open(w, tz, after)
    # both passes of the wall-clock hour count: open 2 real hours that night
    start = dt.datetime(2025, 10, 25, 22, 0, tzinfo=dt.timezone.utc).timestamp()
    assert _open_seconds(w, tz, start, start + 6 * 3600) == pytest.approx(7200, abs=60)
    # and the wait to the next opening counts real seconds across the change
    evening = dt.datetime(2025, 10, 25, 23, 30, tzinfo=dt.timezone.utc).timestamp()  # 01:30 CEST
    assert windows.seconds_until_open(w, tz, evening) == pytest.approx(1800, abs=1)
    late = dt.datetime(2025, 10, 26, 2, 0, tzinfo=dt.timezone.utc).timestamp()       # 03:00 CET
    # next 02:00 is the following night: 23 wall-clock hours, 23 real hours (no change then)
    assert windows.seconds_until_open(w, tz, late) == pytest.approx(23 * 3600, abs=1)


def test_seconds_until_open():
    tz = NOVOKUZNETSK
    assert windows.seconds_until_open(["20:00-07:00"], tz, at(tz, 2025, 3, 1, 19, 0)) == pytest.approx(3600)
    assert windows.seconds_until_open(["20:00-07:00"], tz, at(tz, 2025, 3, 1, 21, 0)) == 0
    # next window tomorrow morning
    assert windows.seconds_until_open(["06:00-07:00"], tz, at(tz, 2025, 3, 1, 7, 0)) == pytest.approx(23 * 3600)


def test_backoff_doubles_caps_and_never_gives_up():
    d = [backoff.delay(n, 30, 2, 600) for n in range(1, 9)]
    assert d == [30, 60, 120, 240, 480, 600, 600, 600]
    assert backoff.delay(0, 30, 2, 600) == 0
    assert backoff.delay(10_000, 30, 2, 600) == 600      # days of outage: still trying, no overflow


def test_link_backoff():
    link = backoff.LinkBackoff(1, 2, 10)
    assert link.up and link.ready(0)
    assert link.failed(100, "refused") == 1
    assert not link.ready(100.5) and link.ready(101)
    assert link.failed(101, "refused") == 2
    assert not link.up and link.last_error == "refused"
    link.succeeded()
    assert link.up and link.ready(0)


class FakeClock:
    def __init__(self):
        self.t = 1000.0
        self.slept = 0.0

    def clock(self):
        return self.t

    def sleep(self, s):
        self.t += s
        self.slept += s


def test_pacer_holds_the_rate_over_a_run():
    c = FakeClock()
    rate = 500_000.0
    p = Pacer(rate, clock=c.clock, sleep=c.sleep)
    chunk, n = 65536, 100
    start = c.t
    for _ in range(n):
        p.wait(chunk)
        c.t += 0.0001          # the write itself
    elapsed = c.t - start
    # every chunk but the last is paid for before the next one starts
    assert elapsed >= (n - 1) * chunk / rate
    assert elapsed <= n * chunk / rate + 0.1
    assert p.bytes_total == n * chunk


def test_pacer_does_not_bank_idle_time_beyond_the_burst():
    c = FakeClock()
    p = Pacer(1000.0, burst_bytes=100, clock=c.clock, sleep=c.sleep)
    p.wait(100)
    c.t += 3600                # an hour idle
    assert p.wait(100) == pytest.approx(0)    # the burst allowance
    assert p.wait(100) == pytest.approx(0)    # ... plus the one chunk in flight
    assert p.wait(100) == pytest.approx(0.1)   # then paced again


def test_uncapped_pacer_never_sleeps():
    c = FakeClock()
    p = Pacer(None, clock=c.clock, sleep=c.sleep)
    for _ in range(10):
        assert p.wait(10_000_000) == 0
    assert c.slept == 0 and not p.capped


def test_pacer_rejects_nonsense():
    with pytest.raises(ValueError):
        Pacer(0)
