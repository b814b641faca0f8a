"""The replication plugin in real Debian Orthanc processes on loopback (issue 5).

LAMI/gateway Orthancs load ``plugins/kontur_entry.py`` as deployed; a TsAMI
Orthanc receives.  Studies come in by C-STORE (DCMTK storescu), as from a
modality.  No mocks of Orthanc.
"""
from __future__ import annotations

import datetime as dt
import time
import zoneinfo

import pytest

from kontur.testing.dicom import add_series, make_study
from kontur.testing.orthanc import wait_for

from kontur.testing.replication import TZ, delivered, http_status, wait_delivered

pytestmark = pytest.mark.orthanc


# --------------------------------------------------------------------------- policies


def test_all_policy_sends_a_stable_study_and_verifies_it(make_node, tsami):
    lami = make_node(mode="all")
    study = make_study(5, patient_name="Иванов^Иван")
    lami.store(study)
    wait_delivered(tsami, study)
    # same SOP Instance UIDs, Cyrillic name intact at the TsAMI
    tags = tsami.get(f"/studies/{study.orthanc_id()}")
    assert tags["PatientMainDicomTags"]["PatientName"] == "Иванов^Иван"
    st = wait_for(lambda: (s := lami.status())["delivered"] == 1 and s, 30, message="delivered in status")
    assert st["queue_depth"] == 0 and st["parked"] == 0 and st["failed"] == 0
    assert st["counters"]["instances_sent_total"] == 5
    assert st["oldest_pending_age_seconds"] is None


def test_late_instances_follow_a_delivered_study(make_node, tsami):
    lami = make_node(mode="all")
    study = make_study(3)
    lami.store(study)
    wait_delivered(tsami, study)
    late = add_series(study, 2)            # a late series, e.g. reconstructions
    lami.store(study, instances=late)
    wait_delivered(tsami, study)
    assert sorted(tsami.all_sop_uids()) == sorted(study.sop_uids)      # no duplicates
    wait_for(lambda: lami.status()["counters"].get("deliveries_total", 0) >= 2, 30, message="second delivery")


def test_pathology_policy_sends_only_flagged_studies(make_node, tsami):
    lami = make_node(mode="pathology")
    plain, flagged, early = make_study(2), make_study(2), make_study(2)
    # a flag may come before the images (the HL7 result of a later issue)
    r = lami.post("/kontur/flag", {"study": early.study_uid, "pathology": True})
    assert r["studies"] == [] and "not in this archive" in r["note"]
    lami.store(plain)
    lami.store(flagged)
    lami.wait_processed(flagged)
    lami.wait_processed(plain)
    assert lami.status()["queue_depth"] == 0
    r = lami.post("/kontur/flag", {"study": flagged.study_uid, "pathology": True})
    assert r["studies"][0]["state"] == "pending"
    wait_delivered(tsami, flagged)
    lami.store(early)
    wait_delivered(tsami, early)
    st = lami.status()
    assert st["queue_depth"] == 0
    assert tsami.sop_uids_of_study(plain.orthanc_id()) == set()


def test_on_demand_sends_nothing_until_an_operator_pushes(make_node, tsami):
    lami = make_node(mode="on-demand")
    a = make_study(2, patient_id="PAT-ONDEMAND")
    b = make_study(1, patient_id="PAT-ONDEMAND")
    c = make_study(2)
    for s in (a, b, c):
        lami.store(s)
    for s in (a, b, c):
        lami.wait_processed(s)
    assert lami.status()["queue_depth"] == 0
    assert tsami.study_ids() == []
    # all of one patient's studies
    r = lami.replicate(patient="PAT-ONDEMAND")
    assert sorted(q["study"] for q in r["queued"]) == sorted([a.orthanc_id(), b.orthanc_id()])
    wait_delivered(tsami, a)
    wait_delivered(tsami, b)
    assert not delivered(tsami, c)
    # one study by its StudyInstanceUID
    lami.replicate(study=c.study_uid)
    wait_delivered(tsami, c)
    # a pushed study stays selected: its late instances follow it
    late = add_series(c, 1)
    lami.store(c, instances=late)
    wait_delivered(tsami, c)


# --------------------------------------------------------------------------- windows, urgent, cap


def _closed_window_now() -> str:
    """A one-hour window starting two hours from now (region time): closed now."""
    now = dt.datetime.now(zoneinfo.ZoneInfo(TZ))
    start = (now + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    end = start + dt.timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_outside_the_window_only_urgent_studies_go(make_node, tsami):
    lami = make_node(mode="all", windows=[_closed_window_now()])
    normal, urgent = make_study(2), make_study(2)
    lami.store(normal)
    lami.store(urgent)
    lami.wait_processed(urgent)
    lami.wait_processed(normal)
    st = lami.status()
    assert st["window_open"] is False and st["queue_depth"] == 2
    assert tsami.study_ids() == []
    r = lami.replicate(study=urgent.orthanc_id(), urgent=True)
    assert r["queued"][0]["urgent"] is True
    wait_delivered(tsami, urgent)
    st = lami.status()
    assert st["queue_depth"] == 1 and not delivered(tsami, normal)
    assert st["oldest_pending_age_seconds"] > 0
    # the queue survives a restart; when the window opens (here: the policy says always), it drains
    policy = lami.policy
    policy["replication"]["windows"] = []
    lami.write_policy(policy)
    lami.orthanc.restart()
    wait_delivered(tsami, normal)


def test_urgent_study_overtakes_the_queue(make_node, tsami):
    # 2 Mbit/s: four queued 400 kB studies take ~6 s; the urgent one must not wait for them
    lami = make_node(mode="on-demand", bandwidth_mbit=2)
    queued = [make_study(4, pixel_bytes=100_000) for _ in range(4)]
    urgent = make_study(1)
    for s in queued + [urgent]:
        lami.store(s)
    for s in queued:
        lami.replicate(study=s.orthanc_id())
    wait_for(lambda: lami.status()["in_flight"], 30, message="the queue to start")
    lami.replicate(study=urgent.orthanc_id(), urgent=True)
    wait_delivered(tsami, urgent)
    remaining = [s for s in queued if not delivered(tsami, s)]
    assert len(remaining) >= 2, "the urgent study waited behind the queue"
    for s in queued:
        wait_delivered(tsami, s)


def test_bandwidth_cap_is_held_by_pacing(make_node, tsami):
    cap_mbit = 4.0                                # 500 000 bytes/s
    lami = make_node(mode="on-demand", bandwidth_mbit=cap_mbit)
    study = make_study(6, pixel_bytes=400_000)    # ~2.4 MB
    lami.store(study)
    lami.wait_processed(study)
    t0 = time.monotonic()
    lami.replicate(study=study.orthanc_id())
    wait_delivered(tsami, study)
    elapsed = time.monotonic() - t0
    cap_bytes = cap_mbit * 1_000_000 / 8
    # the lower bound is not noisy: faster than this would exceed the cap
    assert elapsed >= study.nbytes / cap_bytes * 0.9, (
        f"{study.nbytes} bytes in {elapsed:.2f} s = {study.nbytes * 8 / elapsed / 1e6:.2f} Mbit/s > cap {cap_mbit}")


# --------------------------------------------------------------------------- faults


def test_outbox_survives_link_outage_and_kill9(make_node, tsami):
    tsami.stop()                                  # the link (or the TsAMI) is down
    lami = make_node(mode="all")
    study = make_study(3)
    lami.store(study)                             # the LAMI keeps accepting
    st = wait_for(lambda: (s := lami.status())["failed"] >= 1 and s, 60, message="a failed attempt")
    assert st["queue_depth"] == 1
    assert "cannot reach tsami" in st["last_error"]["message"]
    assert st["link"]["up"] is False
    # the age of the oldest pending study grows while it waits (what on-call watches)
    wait_for(lambda: lami.status()["oldest_pending_age_seconds"] >= 1, 30, message="the pending age to grow")
    lami.orthanc.kill9()
    lami.orthanc.start()
    st = lami.status()
    assert st["queue_depth"] == 1 and st["counters"]["failures_total"] >= 1
    tsami.start()
    wait_delivered(tsami, study)
    wait_for(lambda: lami.status()["queue_depth"] == 0, 30, message="an empty queue")


def test_kill9_mid_transfer_loses_nothing_and_duplicates_nothing(make_node, tsami):
    lami = make_node(mode="on-demand", bandwidth_mbit=2)
    study = make_study(10, pixel_bytes=100_000)    # ~1 MB at 2 Mbit/s: ~4 s
    lami.store(study)
    lami.replicate(study=study.orthanc_id())
    wait_for(lambda: 0 < len(tsami.sop_uids_of_study(study.orthanc_id())) < 10, 60,
             interval=0.05, message="a partial transfer")
    lami.orthanc.kill9()
    partial = len(tsami.sop_uids_of_study(study.orthanc_id()))
    assert partial < 10
    lami.orthanc.start()
    wait_delivered(tsami, study)
    assert sorted(tsami.all_sop_uids()) == sorted(study.sop_uids)
    assert tsami.statistics()["CountInstances"] == 10


def test_refused_study_is_parked_with_its_reason_not_retried_not_lost(make_node, tsami):
    lami = make_node(mode="all")
    refused = make_study(2, patient_id="REFUSED")
    fine = make_study(2)
    lami.store(refused)
    lami.store(fine)
    wait_delivered(tsami, fine)
    st = wait_for(lambda: (s := lami.status())["parked"] == 1 and s, 30, message="a parked study")
    parked = lami.get("/kontur/replication/parked")["parked"]
    assert [p["study_id"] for p in parked] == [refused.orthanc_id()]
    assert "refused" in parked[0]["reason"] and "FilteredOut" in parked[0]["reason"]
    assert st["queue_depth"] == 0
    # the sender goes on with later work (at least StableAge = 2 s: four retry periods of
    # 0.5 s) and never comes back to the parked study by itself
    later = make_study(1)
    lami.store(later)
    wait_delivered(tsami, later)
    again = lami.get("/kontur/replication/parked")["parked"]
    assert again[0]["attempts"] == parked[0]["attempts"] == 1
    # still held locally, and an operator may try again
    assert refused.orthanc_id() in lami.study_ids()
    assert st["counters"]["parked_total"] == 1
    lami.replicate(study=refused.study_uid)
    wait_for(lambda: lami.status()["counters"]["parked_total"] == 2, 30,
             message="a second, operator-requested attempt, parked again")
    assert [p["study_id"] for p in lami.get("/kontur/replication/parked")["parked"]] == [refused.orthanc_id()]


def test_reconciliation_after_a_restart_lost_the_stable_event(make_node, tsami):
    # StableAge 8 s; Orthanc is killed right after the C-STORE, before the study is stable
    lami = make_node(mode="all", stable_age=8)
    study = make_study(3)
    lami.store(study)
    lami.orthanc.kill9()
    lami.orthanc.start()
    wait_delivered(tsami, study)
    changes = lami.get("/changes?limit=1000")["Changes"]
    assert not any(c["ChangeType"] == "StableStudy" and c["ID"] == study.orthanc_id() for c in changes), \
        "Orthanc sent the stable event after all; the test did not exercise reconciliation"


def test_full_pass_finds_what_events_never_announced(make_node, tsami):
    # an archive that held studies before the plugin was deployed, and a TsAMI that lost an instance
    lami = make_node(mode="all", start=False,
                     tuning={"full_pass_first_delay_seconds": 1, "full_pass_interval_seconds": 2})
    cfg = dict(lami.orthanc.user_config)
    lami.orthanc.user_config = {k: v for k, v in cfg.items() if k not in ("PythonScript",)}
    lami.orthanc.user_config["Plugins"] = [p for p in cfg["Plugins"] if "Python" not in p]
    lami.orthanc.start()
    old = make_study(3)
    lami.store(old)
    lami.orthanc.stop()
    lami.orthanc.user_config = cfg
    lami.orthanc.start()                           # now with the plugin
    wait_delivered(tsami, old)
    st = lami.status()
    assert st["full_pass"] and st["full_pass"]["stats"]["requeued"] >= 1
    assert st["full_pass"]["trigger"] == "schedule"
    # the TsAMI loses one instance: the next full pass notices the count and re-sends it
    victim = tsami.get(f"/studies/{old.orthanc_id()}/instances")[0]["ID"]
    tsami.delete(f"/instances/{victim}")
    assert not delivered(tsami, old)
    wait_delivered(tsami, old)
    assert sorted(tsami.all_sop_uids()) == sorted(old.sop_uids)


def test_resend_is_idempotent(make_node, tsami):
    lami = make_node(mode="all")
    study = make_study(4)
    lami.store(study)
    wait_delivered(tsami, study)
    for urgent in (False, True):
        before = wait_for(lambda: (s := lami.status())["queue_depth"] == 0 and s["in_flight"] is None and s,
                          30, message="an idle sender")["counters"].get("deliveries_total", 0)
        lami.replicate(study=study.orthanc_id(), urgent=urgent)
        wait_for(lambda: lami.status()["counters"].get("deliveries_total", 0) > before, 30,
                 message="re-verification")
    assert sorted(tsami.all_sop_uids()) == sorted(study.sop_uids)
    # the transport's own guarantee: the TsAMI keeps the first copy
    assert tsami.upload(study.instances[0].data)["Status"] == "AlreadyStored"
    assert tsami.statistics()["CountInstances"] == 4


def test_a_burst_of_instances_is_read_from_the_change_log_in_few_transactions(make_node, tsami):
    # each instance wakes the change feed; one transaction (one fsync) per instance
    # cost ingest a tenth of its rate on two cores (bench/ingest.py)
    node = make_node(mode="all")
    before = node.status()["feed"]["batches"]
    study = make_study(120)
    node.store(study)
    node.wait_processed(study)                  # its StableStudy came through the feed after every instance
    batches = node.status()["feed"]["batches"] - before
    assert 1 <= batches <= 120 // 4, f"{batches} transactions for 120 instances"


def test_gateway_forwards_everything_and_deletes_only_verified_copies(make_node, tsami):
    tsami.stop()
    gw = make_node(mode="pathology", gateway=True, retention_days=0)   # a gateway ignores the mode
    first, second = make_study(2), make_study(3)
    gw.store(first)                               # link down: the gateway keeps accepting
    gw.store(second)
    wait_for(lambda: gw.status()["failed"] >= 1, 60, message="a failed attempt")
    assert sorted(gw.study_ids()) == sorted([first.orthanc_id(), second.orthanc_id()])
    tsami.start()
    wait_delivered(tsami, first)
    wait_delivered(tsami, second)
    # the count is committed once a study's last instance is gone: wait for it, not for the empty list
    def all_deleted():
        st = gw.status()
        return st if st["counters"].get("deleted_instances_total", 0) >= 5 else None

    st = wait_for(all_deleted, 60, message="local copies deleted after verification")
    assert gw.study_ids() == []
    assert st["policy"] == "gateway" and st["counters"]["deleted_instances_total"] == 5
    assert sorted(tsami.all_sop_uids()) == sorted(first.sop_uids | second.sop_uids)


# --------------------------------------------------------------------------- bad input


def test_bad_requests_get_400_and_orthanc_lives_on(make_node):
    lami = make_node(mode="on-demand")
    for body in (b"", b"not json", b"[1, 2]", b'{"study": 5}', b'{"study": "x", "patient": "y"}',
                 b'{"urgent": true}', b'{"study": "1.2.3", "urgent": "yes"}', b'{"studdy": "1.2.3"}',
                 "{\"study\": \"\u0416\"}".encode()[:-2]):
        status, answer = http_status(lami.post, "/kontur/replicate", body)
        assert status == 400, (body, status, answer)
        assert answer["error"]
    assert http_status(lami.post, "/kontur/replicate", {"study": "1.2.3.4.5"})[0] == 404
    assert http_status(lami.post, "/kontur/flag", {"pathology": True})[0] == 400
    assert http_status(lami.get, "/kontur/replicate")[0] == 405
    # an instance Orthanc cannot parse is refused at the door by Orthanc itself
    status, answer = http_status(lami.upload, b"\x00garbage" * 100)
    assert status == 400 and answer["OrthancError"] == "Bad file format"
    assert lami.status()["enabled"] is True
    assert lami.get("/system")["Version"]


def test_invalid_policy_disables_replication_and_says_why(make_node):
    lami = make_node(mode="all", start=False)
    policy = lami.policy
    policy["replication"]["mode"] = "sometimes"
    policy["replication"]["windows"] = ["25:00-07:00"]
    lami.write_policy(policy)
    lami.orthanc.start()
    st = lami.status()
    assert st["enabled"] is False
    assert "sometimes" in st["reason"] and "25:00-07:00" in st["reason"]
    assert "replication disabled" in lami.orthanc.log_text()
    assert http_status(lami.post, "/kontur/replicate", {"study": "1.2.3"})[0] == 503


def test_metrics_in_prometheus_text(make_node, tsami):
    lami = make_node(mode="all")
    study = make_study(1)
    lami.store(study)
    wait_delivered(tsami, study)
    wait_for(lambda: "kontur_replication_deliveries_total" in lami.get("/kontur/replication/metrics")
             and 'kontur_replication_delivered{node="lami",upstream="tsami"} 1'
             in lami.get("/kontur/replication/metrics"), 30, message="metrics")
    text = lami.get("/kontur/replication/metrics")
    assert "# TYPE kontur_replication_oldest_pending_age_seconds gauge" in text
    assert 'kontur_replication_queue_depth{node="lami",upstream="tsami"} 0' in text
