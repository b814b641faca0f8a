"""Issue 9: the paths where a study was silently left behind or the upstream
ended up wrong, each shown with the fakes of ``fakes.py`` (no Orthanc)."""
from __future__ import annotations

import sqlite3

import pytest

from kontur_plugins.replication import metrics
from kontur_plugins.replication.config import PolicyError, parse_policy


from fakes import delivered, drain, make, md5, set_digest, urgent_during  # noqa: E402
from test_replication_config_decisions import GOOD  # noqa: E402


def feed(eng):
    """One read of the change feed; a failure is recorded, not raised here."""
    try:
        return eng.process_changes()
    except Exception as exc:  # noqa: BLE001 - the status must show it
        return exc


# --- 1. the change feed is at least once ------------------------------------------------------


def _fill_until_full(eng, pages: int) -> None:
    """Cap the outbox file (SQLite's max_page_count) to its size now plus ``pages``:
    writes beyond fail with SQLITE_FULL ("database or disk is full"), as on a full disk."""
    c = eng.outbox._conn()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    used = c.execute("PRAGMA page_count").fetchone()[0]
    c.execute(f"PRAGMA max_page_count={used + pages}")


def test_a_full_disk_mid_batch_never_moves_the_position_past_lost_work(tmp_path):
    eng, local, up, clock, logs = make(tmp_path, tuning={"changes_batch": 1000})
    for k in range(400):
        local.add(f"s{k:03d}", 1)
        local.stable(f"s{k:03d}")
    _fill_until_full(eng, 12)
    feed(eng)
    pos = int(eng.outbox.get_meta("changes_seq"))
    queued = {r["study_id"] for r in eng.outbox.rows("pending")}
    stable_seqs = {c["ID"]: c["Seq"] for c in local.change_log if c["ChangeType"] == "StableStudy"}
    covered = {sid for sid, seq in stable_seqs.items() if seq <= pos}
    assert pos < 800, "the disk filled up mid-batch, yet the position covers every change"
    assert covered <= queued, f"{len(covered - queued)} studies behind the position were never queued"
    st = eng.status()
    assert st["feed"]["failures"] >= 1 and "full" in st["feed"]["last_error"]["message"]
    assert any("feed" in a for a in st["alarms"])
    # the disk has room again: the next attempts queue everything, none twice
    eng.outbox._conn().execute("PRAGMA max_page_count=1073741823")
    clock.t += 3600
    assert not isinstance(feed(eng), Exception)
    assert int(eng.outbox.get_meta("changes_seq")) == 800
    assert len(eng.outbox.rows("pending")) == 400
    assert eng.status()["feed"]["failures"] == 0


def test_a_failing_change_stops_the_feed_before_it_and_is_retried_with_backoff(tmp_path):
    eng, local, up, clock, logs = make(tmp_path)
    for name in ("a", "b", "c"):
        local.add(name, 1)
        local.stable(name)
    real_study = local.study

    def broken(sid):
        if sid == "b":
            raise RuntimeError("the index is busy")
        return real_study(sid)

    local.study = broken
    err = feed(eng)
    assert isinstance(err, Exception) and "index is busy" in str(err)
    b_seq = next(c["Seq"] for c in local.change_log if c["ID"] == "b-i0")
    assert int(eng.outbox.get_meta("changes_seq")) == b_seq - 1
    assert eng.outbox.get("a")["state"] == "pending"           # what came before it is committed
    assert eng.outbox.get("c") is None                         # nothing after it is skipped over
    st = eng.status()["feed"]
    assert st["last_error"]["seq"] == b_seq and st["next_try_in_seconds"] > 0
    assert not eng.feed.ready(clock())
    local.study = real_study
    clock.t += st["next_try_in_seconds"]
    assert eng.feed.ready(clock())
    assert feed(eng) == 4
    assert {r["study_id"] for r in eng.outbox.rows("pending")} == {"a", "b", "c"}


def test_writes_after_sqlite_rolled_back_on_its_own_never_autocommit(tmp_path):
    """SQLITE_FULL can end the transaction by itself; the position written after that
    must not land one statement at a time."""
    eng, *_ = make(tmp_path)
    box = eng.outbox
    box.set_meta("changes_seq", 10)
    with pytest.raises(sqlite3.OperationalError):
        with box.transaction() as c:
            box.touch("s1", 1.0)
            c.execute("ROLLBACK")                  # what SQLite does on SQLITE_FULL or SQLITE_IOERR
            box.touch("s2", 1.0)                   # the handlers go on ...
            box.set_meta("changes_seq", 99)        # ... and the batch moves the position
    assert box.get_meta("changes_seq") == "10"
    assert box.get("s1") is None and box.get("s2") is None


# --- 2. the change log restarts under the plugin -----------------------------------------------


@pytest.mark.parametrize("how", ["restored", "cleared"])
def test_a_restarted_or_cleared_change_log_resets_the_feed_and_runs_a_full_pass(tmp_path, how):
    eng, local, up, clock, logs = make(tmp_path)
    for k in range(5):
        local.add(f"old{k}", 1)
        local.stable(f"old{k}")
    feed(eng)
    drain(eng)
    assert int(eng.outbox.get_meta("changes_seq")) == 10
    if how == "restored":
        # the index restored from a backup: its log numbers from 1 again, and one study
        # that came after the backup point was never delivered
        local.restart_log()
        local.add("new", 2)
        local.stable("new")
        local.add("lost", 1, log=False)
    else:
        local.add("lost", 1)
        local.clear_log()                                      # before the plugin read it
    feed(eng)
    # the feed follows the log as it is now: a study arriving after the reset is queued
    local.add("later", 1)
    local.stable("later")
    feed(eng)
    assert (eng.outbox.get("later") or {}).get("state") == "pending", "the feed is blind after the log restarted"
    st = eng.status()
    assert st["feed"]["resets"] == 1 and ("restarted" if how == "restored" else "cleared") in \
        st["feed"]["last_reset"]["reason"]
    assert st["changes_seq"] == local.last_change()
    assert eng.full_pass.state()["state"] == "requested" and eng.full_pass_wake.is_set()
    assert "kontur_replication_feed_resets_total" in metrics.render(st)
    eng.run_full_pass()
    drain(eng)
    assert up.held.get("lost") == {"lost-i0"}
    if how == "restored":
        assert up.held.get("new") == {"new-i0", "new-i1"}


# --- 3. the full pass compares sets, not counts -------------------------------------------------


def test_same_count_other_instance_is_found_by_the_full_pass(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    delivered(eng, local, "s", 3)
    # the upstream lost one instance and holds another of this study (same count)
    up.held["s"] = {"s-i0", "s-i1", "s-x9"}
    stats = eng.run_full_pass()
    assert stats["requeued"] == 1
    drain(eng)
    assert {"s-i0", "s-i1", "s-i2"} <= up.held["s"]


def test_gateway_study_left_with_fewer_instances_than_upstream_still_gets_its_late_one(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, gateway=True, retention=0)
    delivered(eng, local, "s", 3)
    eng.housekeeping()
    assert local.studies["s"]["instances"] == {}
    local.add("s", 1, log=False)             # a late instance whose change the feed never saw
    stats = eng.run_full_pass()
    assert stats["requeued"] == 1
    drain(eng)
    assert "s-i3" in up.held["s"]
    assert eng.status()["divergent"] == 0    # a gateway deleting its copies is not divergence


def test_a_deletion_here_is_reported_as_divergent_and_never_propagated(tmp_path):
    eng, local, up, clock, logs = make(tmp_path)
    delivered(eng, local, "s", 3)
    local.delete_instance("s-i1")            # e.g. a LAMI freeing its disk; LastUpdate does not move
    local.studies["s"]["last_update"] = "99"  # ... and a late change elsewhere in the study did
    eng.run_full_pass()
    st = eng.status()
    assert st["divergent"] == 1 and up.held["s"] == {"s-i0", "s-i1", "s-i2"} and up.retired == []
    div = eng.problems()["divergent"]
    assert div[0]["study_id"] == "s" and div[0]["divergent"] == 1
    # the operator says it was a correction: the upstream retires it, audited
    r = eng.correct({"action": "sync", "study": "s", "reason": "wrong image deleted"}, "ops-ivanov")
    assert r["extra"] == 1
    drain(eng)
    assert up.held["s"] == {"s-i0", "s-i2"}
    assert any(a["actor"] == "ops-ivanov" for a in eng.outbox.audit_log())


# --- 4. the full pass: keyset pages, resumable, visible ------------------------------------------


def test_full_pass_pages_by_key_resumes_after_an_error_and_after_a_restart(tmp_path):
    eng, local, up, clock, logs = make(tmp_path, tuning={"full_pass_page": 100})
    for k in range(250):
        local.add(f"s{k:03d}", 1, log=False)
    up.held = {f"s{k:03d}": {f"s{k:03d}-i0"} for k in range(250)}
    real = up.digests
    calls = {"n": 0}

    def fail_on_the_second_page(ids):
        calls["n"] += 1
        if calls["n"] == 2:
            up.down = True
        try:
            return real(ids)
        finally:
            up.down = False

    up.digests = fail_on_the_second_page
    with pytest.raises(Exception, match="cannot reach"):
        eng.run_full_pass()
    st = eng.status()["full_pass"]
    assert st["state"] == "running" and st["done"] == 100 and st["total"] == 250
    assert "cannot reach" in st["last_error"]["message"]
    assert 0 < st["progress"] < 1
    text = metrics.render(eng.status())
    assert "kontur_replication_full_pass_error" in text and "kontur_replication_full_pass_progress_ratio" in text
    # Orthanc restarts: a new replicator on the same outbox resumes after the last page done
    eng2, *_ = make(tmp_path, local=local, up=up, clock=clock, first=False)
    up.digests = real
    looked = local.calls["study"]
    stats = eng2.run_full_pass()
    assert local.calls["study"] - looked == 150, "the resumed pass started over"
    fp = eng2.status()["full_pass"]
    assert fp["state"] == "done" and fp["last_completed"]["total"] == 250 and stats["equal"] == 250
    assert local.calls.get("studies_page", 0) == 0, "OFFSET paging (/studies?since=) is not keyset paging"
    assert local.calls["all_study_ids"] == 1
    assert "kontur_replication_full_pass_last_completed_timestamp_seconds" in metrics.render(eng2.status())


def test_full_pass_without_the_upstream_receiver_lists_each_study(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, receiver=False)
    local.add("a", 2, log=False)
    up.held = {"a": {"a-i0"}}
    up.digests = None                          # a plain Orthanc upstream: no kontur/digests
    from kontur_plugins.replication.transport import UpstreamClient  # noqa: F401
    eng.counter = _ListingOnly(up)
    assert eng.run_full_pass()["requeued"] == 1


class _ListingOnly:
    """An upstream client whose receiver routes are missing: digests by listing."""

    def __init__(self, up):
        self.up = up
        self.receiver_available = False

    def digests(self, ids):
        return {sid: (len(self.up.held.get(sid, ())), set_digest(self.up.held.get(sid, ()))) for sid in ids}

    def study_instance_ids(self, sid):
        return self.up.study_instance_ids(sid)


# --- 6. corrections ----------------------------------------------------------------------------


def _modified(local, old, new, n=2, level="studies", pid="P2"):
    """Orthanc's modify of study ``old`` into ``new`` (KeepSource false)."""
    local.add(new, n, pid=pid)
    local.metadata_[(level, new, "ModifiedFrom")] = old
    local.delete("studies", old)
    local.stable(new)


@pytest.mark.parametrize("mode", ["all", "on-demand"])
def test_orthanc_modify_replaces_the_upstream_copy_after_the_new_one_is_delivered(tmp_path, mode):
    eng, local, up, clock, logs = make(tmp_path, mode=mode)
    local.add("old", 2, pid="WRONG")
    local.stable("old")
    feed(eng)
    if mode == "on-demand":
        eng.request(study="old")
    drain(eng)
    assert up.held["old"] == {"old-i0", "old-i1"}
    _modified(local, "old", "new", pid="RIGHT")
    # the upstream must never hold neither: retire waits for the new study's delivery
    order = []
    real_post, real_retire = up.post_instance, up.retire
    up.post_instance = lambda data, should_abort=None: (order.append("post"), real_post(data, should_abort))[1]
    up.retire = lambda **kw: (order.append("retire"), real_retire(**kw))[1]
    feed(eng)
    drain(eng)
    assert up.held["new"] == {"new-i0", "new-i1"}
    assert up.held["old"] == set(), "the study is still upstream under the wrong patient"
    assert order.index("retire") > max(i for i, o in enumerate(order) if o == "post")
    assert up.retired[0]["requires"] == ["new"]
    audit = eng.outbox.audit_log()
    assert any("correction applied upstream" in a["action"] and a["subject"] == "new" for a in audit)
    # a late series of the corrected study: it goes, and no second correction is recorded
    local.add("new", 1, series="late")
    local.stable("new")
    feed(eng)
    drain(eng)
    assert "new-i2" in up.held["new"] and len(up.retired) == 1
    assert len(eng.outbox.corrections_of("new")) == 1


def _copied_by_modify(tmp_path, old="old", new="new"):
    """A study sent upstream, then copied by Orthanc's modify (KeepSource: true) and the copy sent too."""
    eng, local, up, clock, logs = make(tmp_path)
    delivered(eng, local, old, 2)
    local.add(new, 2, pid="P2")
    local.metadata_[("studies", new, "ModifiedFrom")] = old
    local.stable(new)
    feed(eng)
    drain(eng)
    return eng, local, up


def test_modify_keeping_the_source_retires_upstream_only_once_the_source_is_deleted(tmp_path):
    eng, local, up = _copied_by_modify(tmp_path)
    assert up.held["old"] and up.held["new"]                    # a copy, both legitimately here
    assert eng.status()["corrections"]["blocked"] == 1
    local.delete("studies", "old")
    eng.notify_deleted("studies", "old")                        # Orthanc's DELETED callback
    eng.process_deleted()
    drain(eng)
    assert up.held["old"] == set() and up.held["new"]
    # the callback is lost on a crash: the full pass finds a blocked correction's source gone too
    eng2, local2, up2 = _copied_by_modify(tmp_path / "two", "o", "n")
    local2.delete("studies", "o")                               # no callback this time
    eng2.run_full_pass()
    drain(eng2)
    assert up2.held["o"] == set() and up2.held["n"]


def test_a_correction_of_a_correction_retires_both_old_copies(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    delivered(eng, local, "v1", 1)
    _modified(local, "v1", "v2", n=1)
    up.down = True                                              # v2 cannot go yet
    feed(eng)
    drain(eng)
    _modified(local, "v2", "v3", n=1)
    feed(eng)
    up.down = False
    clock.t += 1000
    drain(eng)
    assert up.held.get("v1", set()) == set() and up.held.get("v2", set()) == set()
    assert up.held["v3"] == {"v3-i0"}


def test_same_uids_with_other_content_replace_the_upstream_copy(tmp_path):
    eng, local, up, clock, logs = make(tmp_path)
    delivered(eng, local, "s", 2)
    old = local.studies["s"]["instances"]["s-i1"]
    # deleted here and received again (a corrected re-send from the modality): same IDs
    local.delete_instance("s-i1")
    local.put("s", "s-i1", old + b"corrected name")
    local.stable("s")
    feed(eng)
    drain(eng)
    assert up.replaced == ["s-i1"]
    assert md5(up.contents["s-i1"]) == md5(old + b"corrected name")
    assert any(a["action"] == "replaced upstream" for a in eng.outbox.audit_log())


def test_reject_a_wrong_series_deletes_it_here_and_upstream(tmp_path):
    eng, local, up, clock, _ = make(tmp_path)
    local.add("s", 2, series="good")
    local.add("s", 1, series="wrong")
    local.stable("s")
    feed(eng)
    drain(eng)
    r = eng.correct({"action": "reject", "series": "s-wrong", "reason": "another patient's series"}, "ops")
    assert r["correction"] and "s-i2" not in local.studies["s"]["instances"]
    drain(eng)
    assert up.held["s"] == {"s-i0", "s-i1"}
    with pytest.raises(Exception, match="reason"):
        eng.correct({"action": "reject", "series": "s-good"}, "ops")


# --- 7. the smaller ones --------------------------------------------------------------------------


def test_a_file_missing_from_storage_is_an_alarm_not_a_deletion(tmp_path):
    eng, local, up, clock, logs = make(tmp_path)
    local.add("s", 3)
    local.lost_files.add("s-i1")
    local.stable("s")
    feed(eng)
    drain(eng)
    row = eng.outbox.get("s")
    assert row["state"] == "pending" and row["storage_error"], row
    st = eng.status()
    assert st["storage_errors"] == 1 and any("storage loss" in a for a in st["alarms"])
    assert "STORAGE LOSS" in st["last_error"]["message"] and "s-i1" in st["last_error"]["message"]
    assert "kontur_replication_storage_errors" in metrics.render(st)
    assert st["delivered"] == 0
    # the file is restored: the next attempt delivers and the alarm clears
    local.lost_files.clear()
    clock.t += 1000
    drain(eng)
    assert eng.status()["storage_errors"] == 0 and eng.status()["delivered"] == 1


def test_only_a_refusal_naming_the_instance_parks(tmp_path):
    from kontur_plugins.replication import transport
    orthanc_400 = b'{"HttpError": "Bad Request", "OrthancError": "Bad file format", "OrthancStatus": 15}'
    assert isinstance(transport.classify_store(400, orthanc_400), transport.RefusedError)
    assert isinstance(transport.classify_store(413, b"<html>413</html>"), transport.RefusedError)
    for status, body in ((404, b"<html>404 Not Found</html>"), (400, b"<html>nginx bad request</html>"),
                         (401, b""), (403, b""), (405, b""), (409, b"{}"), (500, b"{}"), (502, b"")):
        err = transport.classify_store(status, body)
        assert isinstance(err, transport.TransientError), (status, body, err)


def test_release_parked_in_bulk_is_audited(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand")
    for name in ("a", "b"):
        local.add(name, 1)
        up.refuse.add(f"{name}-i0")
        eng.request(study=name)
    drain(eng)
    assert eng.status()["parked"] == 2
    up.refuse.clear()                                    # the cause fixed at the TsAMI
    out = eng.release_parked(actor="ops-petrov", reason="filter fixed at the TsAMI")
    assert sorted(o["study"] for o in out) == ["a", "b"]
    drain(eng)
    assert eng.status()["parked"] == 0 and set(up.held) == {"a", "b"}
    assert eng.outbox.audit_log()[-1]["actor"] == "ops-petrov" or any(
        a["actor"] == "ops-petrov" for a in eng.outbox.audit_log())


def test_an_https_upstream_without_a_ca_file_is_refused():
    import copy
    doc = copy.deepcopy(GOOD)
    doc["replication"]["upstream"].update(url="https://10.0.0.1:443/", ca_file=None)
    with pytest.raises(PolicyError, match="ca_file"):
        parse_policy(doc)


def test_deidentified_logs_carry_no_patient_id_or_uid(tmp_path):
    eng, local, up, clock, logs = make(tmp_path, mode="on-demand", deidentify=True)
    local.add("s", 1, pid="PAT-12345", uid="1.2.643.5.1.13.777")
    eng.request(patient="PAT-12345")
    eng.request(study="1.2.643.5.1.13.777")
    text = "\n".join(logs)
    assert "PAT-12345" not in text and "1.2.643.5.1.13.777" not in text
    assert "queued patient ~" in text and "queued study ~" in text
    # without DeidentifyLogs the operator sees them
    eng2, local2, _, _, logs2 = make(tmp_path / "plain", mode="on-demand")
    local2.add("s", 1, pid="PAT-12345")
    eng2.request(patient="PAT-12345")
    assert "PAT-12345" in "\n".join(logs2)


def test_the_failed_gauge_does_not_count_paused_studies(tmp_path):
    eng, local, up, clock, _ = make(tmp_path, mode="on-demand")
    local.add("big", 5)
    local.add("hot", 1)
    eng.request(study="big")
    up.down = True
    drain(eng)                                   # one failed attempt of "big"
    assert eng.status()["failed"] == 1
    up.down = False
    clock.t += 1000
    urgent_during(eng, up, "hot")
    assert eng.send_study(eng.outbox.next_due(clock(), True)) == "paused"
    assert eng.status()["failed"] == 0, "a study paused for an urgent one is not failing"
