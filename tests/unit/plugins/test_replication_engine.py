"""The replicator's logic with fake local and upstream archives (no Orthanc)."""
from __future__ import annotations

import pytest

from kontur_plugins.pipeline import StudyRef
from kontur_plugins.replication.engine import UnknownStudy

from fakes import FakeLocal, delivered, drain, make, urgent_during  # noqa: E402


def test_stable_study_is_sent_verified_and_late_instances_follow(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    local.add("s1", 3)
    local.stable("s1")
    eng.process_changes()
    assert eng.outbox.get("s1")["state"] == "pending"
    assert drain(eng) == 1
    assert up.held["s1"] == {"s1-i0", "s1-i1", "s1-i2"}
    assert eng.status()["delivered"] == 1
    local.add("s1", 2)
    eng.process_changes()
    assert eng.outbox.get("s1")["awaiting_stable"] == 1
    local.stable("s1")
    eng.process_changes()
    drain(eng)
    assert len(up.held["s1"]) == 5
    assert sorted(up.posts) == sorted(set(up.posts))      # nothing sent twice


def test_first_start_leaves_history_to_the_full_pass(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    assert eng.outbox.get_meta("changes_seq") == "0"
    local.add("old", 2)
    local.stable("old")
    # the plugin deployed onto this archive now: its first start follows /changes from the end
    eng2, *_ = make(tmp_path / "other", local=local, up=up, clock=clock)
    assert eng2.outbox.get_meta("changes_seq") == str(local.last_change()) == "3"
    eng2.process_changes()
    assert eng2.outbox.get("old") is None and up.posts == []
    # ... and the full pass finds the history the feed skipped
    assert eng2.run_full_pass()["requeued"] == 1
    assert drain(eng2) == 1 and up.held["old"] == {"old-i0", "old-i1"}


def test_a_study_arriving_while_the_plugin_first_starts_waits_for_stability_and_is_archived(tmp_path):
    """Orthanc takes studies before the plugin's feed has read where /changes
    ends: the feed starts after their instances.  The full pass must not send
    such a study at once, half received and untold: it is still arriving
    (Orthanc's IsStable is false), so it waits for stability like any new
    study, and its steps are archived, then delivered (found by the suite:
    the MIS was told "delivered" only)."""
    local = FakeLocal()
    local.add("now", 2, arriving=True)             # arriving while the plugin starts
    eng, _, up, clock, _ = make(tmp_path, local=local)
    assert eng.outbox.get_meta("changes_seq") == "2"      # past the study's instances
    stats = eng.run_full_pass()
    assert stats["requeued"] == 0 and drain(eng) == 0 and up.posts == []
    assert eng.outbox.get("now")["awaiting_stable"] == 1
    local.add("now", 1, arriving=True)             # the rest of the study
    local.stable("now")
    eng.process_changes()
    assert drain(eng) == 1 and up.held["now"] == {"now-i0", "now-i1", "now-i2"}
    assert [e["kind"] for e in eng.outbox.events_after(0)] == ["archived", "delivered"]
    # no StableStudy at all (Orthanc restarted meanwhile): the quiet period decides, as for any study
    local.add("later", 1, arriving=True)
    eng2, *_ = make(tmp_path / "other", local=local, up=up, clock=clock)
    eng2.run_full_pass()
    assert eng2.outbox.get("later")["awaiting_stable"] == 1
    clock.t += 10 + 5
    assert eng2.sweep_quiet() == 1 and drain(eng2) == 1
    assert [e["kind"] for e in eng2.outbox.events_after(0)] == ["archived", "delivered"]


def test_a_study_the_full_pass_sent_before_its_stable_event_is_still_archived(tmp_path):
    """The full pass may send a study whose StableStudy the feed reads only
    afterwards: that stable event still records the study as archived here
    (once), so the MIS hears of it."""
    local = FakeLocal()
    local.add("s", 2, arriving=True)
    eng, _, up, clock, _ = make(tmp_path, local=local)
    local.stable("s")                              # stable before the pass lists it
    assert eng.run_full_pass()["requeued"] == 1 and drain(eng) == 1
    eng.process_changes()                          # its StableStudy, read now
    local.stable("s")
    eng.process_changes()
    assert [e["kind"] for e in eng.outbox.events_after(0)] == ["delivered", "archived"]


def test_lost_stable_event_recovered_after_quiet_period(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    local.add("s", 2)                      # no StableStudy will ever come (restart forgot it)
    eng.process_changes()
    assert eng.sweep_quiet() == 0
    clock.t += 10 + 5                      # StableAge + grace
    assert eng.sweep_quiet() == 1
    assert eng.outbox.get("s")["state"] == "pending"
    assert "no stable event" in eng.outbox.get("s")["reason"]


def test_a_study_its_device_reported_completed_is_ready_after_the_settle_not_stable_age(tmp_path):
    """MPPS COMPLETED (the HL7 service's state) calls a study complete after a
    few quiet seconds; Orthanc's StableStudy later is not a second decision;
    an instance after it touches the study again, as after any send."""
    completed: set[str] = set()
    eng, local, up, clock, _ = make(tmp_path, completed_of=lambda uids: completed & set(uids),
                                    tuning={"mpps_settle_seconds": 2})
    local.add("a", 2)
    local.add("b", 2)
    eng.process_changes()
    clock.t += 3                           # quiet past the settle, far from StableAge (10)
    assert eng.sweep_quiet() == 0          # no MPPS yet: StableAge decides
    completed.add("1.2.a")
    assert eng.sweep_quiet() == 1
    assert eng.outbox.get("a")["state"] == "pending" and "COMPLETED (MPPS)" in eng.outbox.get("a")["reason"]
    assert eng.outbox.get("b")["awaiting_stable"] == 1 and eng.outbox.get("b")["state"] == "idle"
    assert drain(eng) == 1 and up.held["a"] == {"a-i0", "a-i1"}
    sent = len(up.posts)
    local.stable("a")                      # Orthanc's StableStudy, StableAge later
    eng.process_changes()
    assert eng.outbox.get("a")["state"] == "delivered" and drain(eng) == 0 and len(up.posts) == sent
    local.add("a", 1)                      # a late instance
    eng.process_changes()
    assert eng.outbox.get("a")["awaiting_stable"] == 1
    clock.t += 3
    assert eng.sweep_quiet() == 1 and drain(eng) == 1 and len(up.held["a"]) == 3
    # the HL7 service's state unreadable: StableAge decides, as without MPPS
    eng2, local2, up2, clock2, logs = make(tmp_path / "down", completed_of=lambda uids: 1 / 0)
    local2.add("c", 1)
    eng2.process_changes()
    clock2.t += 6
    assert eng2.sweep_quiet() == 0 and any("MPPS is unknown" in ln for ln in logs)


def test_a_studys_steps_are_kept_as_events_in_order_and_pruned_after_their_time(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, tuning={"events_keep_seconds": 100})
    local.add("s", 2)
    local.stable("s")
    eng.process_changes()
    drain(eng)
    kinds = [(e["kind"], e["study_uid"]) for e in eng.outbox.events_after(0)]
    assert kinds == [("archived", "1.2.s"), ("delivered", "1.2.s")]
    local.stable("s")                      # a second stable event with no new instance: not archived again
    eng.process_changes()
    assert len(eng.outbox.events_after(0)) == 2
    assert eng.prune() == 0                # young
    clock.t += 3700
    assert eng.prune() == 2 and eng.outbox.events_after(0) == []
    assert eng.prune() == 0                # hourly


def test_pathology_and_on_demand(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="pathology")
    local.add("a", 1)
    local.add("b", 1)
    local.stable("a")
    local.stable("b")
    eng.process_changes()
    assert eng.outbox.summary(clock(), 1)["queue_depth"] == 0
    eng.flag("1.2.b")
    assert eng.outbox.get("b")["state"] == "pending" and eng.outbox.get("a")["state"] == "idle"
    eng.flag("1.2.b", pathology=False)
    assert eng.outbox.get("b")["state"] == "idle"
    eng2, local2, *_ = make(tmp_path / "od", mode="on-demand")
    local2.add("x", 1, pid="PX")
    local2.add("y", 1, pid="PX")
    local2.stable("x")
    eng2.process_changes()
    assert eng2.outbox.summary(clock(), 1)["queue_depth"] == 0
    out = eng2.request(patient="PX")
    assert sorted(q["study"] for q in out) == ["x", "y"]
    with pytest.raises(UnknownStudy):
        eng2.request(study="9.9.9")


def test_a_study_flagged_while_it_arrives_goes_once_it_is_complete(tmp_path):
    """A result can flag a study before the feed has read its instances: it
    goes when it is stable, whole and once, archived then delivered -- not at
    the flag, half received, and again at its stable event."""
    eng, local, up, clock, _ = make(tmp_path, mode="pathology")
    local.add("s", 2, arriving=True)
    eng.flag("1.2.s")
    assert drain(eng) == 0 and up.posts == []
    local.add("s", 1, arriving=True)
    local.stable("s")
    eng.process_changes()
    assert drain(eng) == 1 and up.held["s"] == {"s-i0", "s-i1", "s-i2"}
    assert len(up.posts) == 3
    assert [e["kind"] for e in eng.outbox.events_after(0)] == ["archived", "delivered"]


def test_window_closed_only_urgent_studies_go(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand", windows=["00:00-00:01"])
    clock.t = 1_700_000_000.0 + 3600 * 5      # some hour well outside that minute (UTC+7 local)
    assert not eng.window_open()
    local.add("n", 2)
    local.add("u", 1)
    eng.request(study="n")
    assert not eng.send_next()                  # closed: nothing goes
    eng.request(study="u", urgent=True)
    assert eng.send_next()
    assert "u" in up.held and "n" not in up.held
    assert not eng.send_next() and "n" not in up.held      # still closed for the routine one
    assert eng.status()["queue_depth"] == 1


def test_urgent_request_pauses_a_running_study(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand")
    local.add("big", 5)
    local.add("hot", 1)
    eng.request(study="big")
    urgent_during(eng, up, "hot")
    assert eng.send_study(eng.outbox.next_due(clock(), True)) == "paused"
    assert len(up.held["big"]) == 2
    assert eng.send_next() and "hot" in up.held
    assert eng.send_next() and len(up.held["big"]) == 5


def test_link_down_backs_off_and_keeps_the_study(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand")
    local.add("s", 2)
    eng.request(study="s")
    up.down = True
    assert eng.send_next()
    st = eng.status()
    assert st["queue_depth"] == 1 and st["failed"] == 1 and not st["link"]["up"]
    assert "cannot reach" in st["last_error"]["message"]
    assert not eng.send_next()                  # backing off: not hammering the link
    clock.t += 10
    up.down = False
    assert eng.send_next()
    assert eng.status()["delivered"] == 1 and eng.status()["link"]["up"]


def test_link_probe_ends_a_long_backoff_soon_after_the_link_returns(tmp_path):
    eng, local, up, clock, logs = make(tmp_path, mode="on-demand")
    probe = eng.cfg.t("link_probe_seconds")
    local.add("s", 2)
    local.add("t", 1)
    eng.request(study="s")
    up.down = True
    for _ in range(6):                          # a long outage: the backoff grows to its cap (100 s)
        clock.t = max(clock.t, eng.link.next_try)
        assert eng.send_next()
    assert eng.link.next_try - clock.t == 100 and eng.link.failures == 6
    eng.request(study="t")                      # queued during the outage: held by the link
    clock.t += probe
    assert not eng.send_next() and up.pings == 1           # probed once: still down
    assert not eng.send_next() and up.pings == 1           # not again before the next probe is due
    assert 0 < eng._idle_wait(999) <= probe                 # the sender wakes for the probe, not the backoff
    up.down = False
    clock.t += probe                            # the link came back; the backoff has 40 s to run
    assert not eng.link.ready(clock.t)
    assert eng.send_next() and up.pings == 2    # the probe answered: sending resumes now
    assert eng.link.up and any("answers again" in ln for ln in logs)
    assert eng.send_next()
    assert eng.status()["delivered"] == 2 and set(up.held) == {"s", "t"}


def test_link_probe_leaves_a_study_waiting_for_its_own_reasons(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand")
    local.add("s", 1)
    eng.request(study="s")
    row = eng.outbox.next_due(clock(), True)
    eng._study_failed(row, "not verified")      # its own backoff: 10 s
    eng.outbox.failed("s", clock(), "not verified", clock.t + 500)   # say, much longer
    assert eng.outbox.release_held(clock.t, clock.t + 100) == 0
    assert eng.outbox.next_attempt_time() == clock.t + 500


def test_refused_instance_parks_the_study(tmp_path):
    eng, local, up, clock, logs = make(tmp_path, mode="on-demand")
    local.add("s", 3)
    up.refuse.add("s-i1")
    eng.request(study="s")
    assert eng.send_next()
    row = eng.outbox.get("s")
    assert row["state"] == "parked" and "s-i1" in row["reason"] and "HTTP 400" in row["reason"]
    clock.t += 10_000
    assert not eng.send_next()                  # never retried by itself
    assert any("parked" in line for line in logs)


def test_exception_is_logged_with_the_study_and_retried(tmp_path):
    eng, local, up, clock, logs = make(tmp_path, mode="on-demand")
    local.add("s", 1)
    eng.request(study="s")
    local.fail_listing.add("s")
    assert eng.send_next()
    row = eng.outbox.get("s")
    assert row["state"] == "pending" and row["attempts"] == 1 and "internal error" in row["last_error"]
    assert any("study s: internal error" in line and "the index is on fire" in line for line in logs)
    local.fail_listing.clear()
    clock.t += 10
    assert eng.send_next() and eng.outbox.get("s")["state"] == "delivered"


def test_acknowledged_but_missing_is_not_delivered(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand")
    local.add("s", 2)
    eng.request(study="s")
    up.study_instance_ids = lambda sid: set()      # the upstream says stored, then lists nothing
    assert eng.send_next()
    row = eng.outbox.get("s")
    assert row["state"] == "pending" and "not verified" in row["last_error"]


def test_gateway_deletes_only_verified_instances(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, gateway=True, retention=0)
    assert delivered(eng, local, "s", 2) == 1
    # a late instance arrives while housekeeping runs: after its local listing, before the
    # upstream's listing and the deletes
    real_up_listing = up.study_instance_ids

    def upstream_listing_then_arrival(sid):
        answer = real_up_listing(sid)
        local.add("s", 1, log=False)              # its change is not even read yet
        return answer

    up.study_instance_ids = upstream_listing_then_arrival
    assert eng.housekeeping() == 2
    up.study_instance_ids = real_up_listing
    assert sorted(local.deleted) == ["s-i0", "s-i1"]
    assert set(local.studies["s"]["instances"]) == {"s-i2"}
    # the late one was neither listed nor deleted; the study goes again for it
    local.add("s", 0)
    local.stable("s")
    eng.process_changes()
    assert drain(eng) == 1 and "s-i2" in up.held["s"]
    eng.housekeeping()
    assert local.studies["s"]["instances"] == {}


def test_gateway_housekeeping_requeues_what_it_had_to_keep(tmp_path):
    """An undelivered instance found at deletion time (its change lost) is queued, not left forever."""
    eng, local, up, clock, _ = make(tmp_path, gateway=True, retention=0)
    assert delivered(eng, local, "s", 2) == 1
    local.add("s", 1, log=False)                 # no change entry will ever announce it
    assert eng.housekeeping() == 2
    assert eng.outbox.get("s")["state"] == "pending"
    assert drain(eng) == 1 and "s-i2" in up.held["s"]
    eng.housekeeping()
    assert local.studies["s"]["instances"] == {}


def test_gateway_retention_waits(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, gateway=True, retention=2)
    local.add("s", 1)
    local.stable("s")
    eng.process_changes()
    drain(eng)
    assert eng.housekeeping() == 0
    clock.t += 2 * 86400
    assert eng.housekeeping() == 1


def test_full_pass_requeues_shortfalls_only(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    local.add("ok", 2)
    local.add("short", 3)
    local.add("absent", 1)
    up.held = {"ok": {"ok-i0", "ok-i1"}, "short": {"short-i0"}}
    stats = eng.run_full_pass()
    assert stats["compared"] == 3 and stats["requeued"] == 2
    assert eng.outbox.get("ok")["state"] == "delivered"        # verified by the pass itself
    assert "holds 1 of 3" in eng.outbox.get("short")["reason"]
    drain(eng)
    listings = local.calls["study_instance_ids"]
    again = eng.run_full_pass()
    assert again["requeued"] == 0 and again["compared"] == 3 and again["equal"] == 3
    # unchanged verified studies are vouched for by the outbox: no study is listed again
    assert again["listed_locally"] == 0 and local.calls["study_instance_ids"] == listings


def test_a_gate_holds_a_study_back(tmp_path):
    class Hold:
        name = "package"

        def __init__(self):
            self.ok = False

        def check(self, study: StudyRef):
            return None if self.ok else "no conclusion attached"

    gate = Hold()
    eng, local, up, clock, _ = make(tmp_path, gates=[gate])
    local.add("s", 1)
    local.stable("s")
    eng.process_changes()
    row = eng.outbox.get("s")
    assert row["state"] == "held" and "no conclusion" in row["reason"]
    assert not eng.send_next()
    gate.ok = True
    eng.run_full_pass()
    assert eng.outbox.get("s")["state"] == "pending"


def test_broken_gate_holds_rather_than_leaks(tmp_path):
    class Broken:
        name = "broken"

        def check(self, study):
            raise ValueError("bug")

    eng, local, up, clock, _ = make(tmp_path, gates=[Broken()])
    local.add("s", 1)
    local.stable("s")
    eng.process_changes()
    assert eng.outbox.get("s")["state"] == "held"


def test_a_started_engine_follows_the_change_log_at_once_not_at_the_first_change(tmp_path):
    """The changes thread reads where /changes ends as soon as it starts, not
    when the first change wakes it (or its poll elapses): otherwise the first
    study a freshly deployed node receives is left to the full pass and shows
    as waiting for nothing meanwhile (found by the suite's MPPS test)."""
    from kontur.testing.orthanc import wait_for

    local = FakeLocal()
    local.add("old", 1)
    eng, *_ = make(tmp_path, local=local, first=False, tuning={"changes_poll_seconds": 3600})
    assert eng.outbox.get_meta("changes_seq") is None
    eng.start()
    try:
        wait_for(lambda: eng.outbox.get_meta("changes_seq") is not None, 30,
                 message="the feed to record its first position")
        assert eng.outbox.get_meta("changes_seq") == str(local.last_change())
    finally:
        eng.stop()
