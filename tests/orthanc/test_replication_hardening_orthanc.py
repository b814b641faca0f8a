"""Issue 9 in Debian's Orthanc: the defects that live in Orthanc's behaviour.

The TsAMI here is the replication region's ``repl-tsami`` exactly as kontur
renders it (:class:`kontur.testing.rendered.RenderedNode`: the rendered
Orthanc configuration with ``LimitFindResults: 100``, the roles filter with the
rendered table, kontur's plugin as receiver, and nginx with the rendered site
and mutual TLS), not a bare Orthanc.  The LAMI is a real Orthanc with kontur's
plugin whose policy points at that nginx with the ``peer-all-lami`` account and
its client certificate.  Studies come in by C-STORE (DCMTK storescu).
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kontur.testing.dicom import make_instance, make_study, storescu
from kontur.testing.orthanc import wait_for
from kontur.testing.rendered import RenderedNode
from kontur.testing.replication import SCU_AET, Node, new_node, wait_delivered

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]
REGION = REPO / "tests" / "data" / "replication-region.yaml"


@pytest.fixture
def rtsami(tmp_path):
    node = RenderedNode(REGION, "repl-tsami", tmp_path / "tsami")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def lami_of(tmp_path, processes, rtsami):
    """A LAMI replicating to the rendered TsAMI through its nginx as ``peer-<name>``."""
    def factory(name: str = "all-lami", *, stable_age: int = 2, start: bool = True, **policy_kw) -> Node:
        creds = {"username": f"peer-{name}", "password": rtsami.peer_password(name), **rtsami.client_files(name)}
        return new_node(tmp_path / name, name, rtsami.url, processes, stable_age=stable_age, start=start,
                        policy_node=name, tls=creds, **policy_kw)
    return factory


def https_call(node: RenderedNode, login: str, password: str, tls: dict, method: str, path: str,
               body: bytes | None = None, content_type: str = "application/json") -> int:
    import base64
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(tls["ca_file"])
    ctx.load_cert_chain(tls["cert_file"], tls["key_file"])
    req = urllib.request.Request(node.url.rstrip("/") + path, data=body, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode())
    if body is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def upstream_audit(node: RenderedNode) -> list[dict]:
    db = node.workdir / "state" / "replication.sqlite3"
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM audit ORDER BY id")]


def full_pass_done(lami: Node, number: int) -> dict | None:
    fp = lami.status().get("full_pass") or {}
    done = fp.get("last_completed") or {}
    return done if done.get("pass", 0) >= number and fp.get("state") == "done" else None


# --- defect 5 (and 3, 4): a full pass across more studies than LimitFindResults ------------------


def test_full_pass_against_the_rendered_tsami_finds_exactly_what_it_lost(lami_of, rtsami, tmp_path):
    assert rtsami.config["LimitFindResults"] == 100
    lami = lami_of(tuning={"full_pass_page": 100})
    # short StudyInstanceUIDs: a query naming many of them fits in one URL, and an
    # answer capped at 100 would silently drop the rest
    studies = [make_study(1, study_uid=f"1.2.826.0.1.3680043.10.1499.{k}") for k in range(130)]
    files = []
    for s in studies:
        files += s.write(tmp_path / "in")
    storescu(files, port=lami.dicom_port, called_aet=lami.aet, calling_aet=SCU_AET)
    tsami = rtsami.orthanc
    wait_for(lambda: tsami.statistics()["CountInstances"] == 130, 180, interval=0.5,
             message="130 studies at the TsAMI")
    wait_for(lambda: lami.status()["queue_depth"] == 0, 60, message="an idle LAMI")
    # the TsAMI loses an instance of the study on the last page, and one of another study
    # is replaced there by a different instance (same count)
    by_id = sorted(studies, key=lambda s: s.orthanc_id())
    lost, swapped = by_id[-1], by_id[7]
    for s in (lost, swapped):
        tsami.delete(f"/instances/{tsami.get(f'/studies/{s.orthanc_id()}/instances')[0]['ID']}")
    stranger = make_instance(patient_id=swapped.patient_id, patient_name=swapped.patient_name,
                             study_uid=swapped.study_uid, series_uid=swapped.instances[0].series_uid)
    tsami.upload(stranger.data)
    assert len(tsami.get(f"/studies/{swapped.orthanc_id()}/instances")) == 1
    digests_before = rtsami.nginx.access_log().count("POST /kontur/digests")

    assert lami.post("/kontur/full-pass", {})["requested"] is True
    done = wait_for(lambda: full_pass_done(lami, 1), 120, message="the full pass")
    st = done["stats"]
    assert (st["studies"], st["compared"], st["requeued"]) == (130, 130, 2), st
    wait_delivered(tsami, lost)
    wait_for(lambda: swapped.sop_uids <= tsami.sop_uids_of_study(swapped.orthanc_id()), 60,
             message="the swapped study complete again")
    log = rtsami.nginx.access_log()
    assert log.count("POST /kontur/digests") - digests_before == 2      # 130 studies in pages of 100
    assert "/dicom-web/" not in log and "/tools/find" not in log
    # the stranger instance was not sent by this LAMI: the TsAMI keeps it
    assert stranger.sop_uid in tsami.sop_uids_of_study(swapped.orthanc_id())


# --- defect 7: the peer account gets only what replication needs ---------------------------------


def test_the_peer_account_at_the_tsami_may_upload_and_verify_but_not_read_studies(rtsami):
    tsami = rtsami.orthanc
    study = make_study(1)
    tsami.upload(study.instances[0].data)                     # another hospital's study
    iid = tsami.instance_ids()[0]
    tls = rtsami.client_files("all-lami")
    pw = rtsami.peer_password("all-lami")

    def peer(method, path, body=None, ctype="application/json"):
        return https_call(rtsami, "peer-all-lami", pw, tls, method, path, body, ctype)

    new = make_study(1)
    assert peer("POST", "/instances", new.instances[0].data, "application/dicom") == 200
    assert peer("GET", "/system") == 200
    assert peer("GET", f"/studies/{study.orthanc_id()}/series") == 200
    assert peer("POST", "/kontur/digests", json.dumps({"studies": [study.orthanc_id()]}).encode()) == 200
    for method, path in (("GET", f"/instances/{iid}/file"), ("GET", "/patients"), ("GET", "/studies"),
                         ("GET", f"/studies/{study.orthanc_id()}/archive"), ("GET", "/dicom-web/studies"),
                         ("GET", f"/instances/{iid}/tags"), ("GET", "/kontur/replication"),
                         ("DELETE", f"/studies/{study.orthanc_id()}"), ("POST", "/tools/find"),
                         ("GET", "/app/explorer.html")):
        body = b'{"Level": "Study", "Query": {}}' if path == "/tools/find" else None
        assert peer(method, path, body) == 403, (method, path)
    assert peer("POST", "/kontur/retire", json.dumps({"retire": [study.orthanc_id()], "requires": [],
                                                       "reason": "x"}).encode()) == 200
    assert study.orthanc_id() in tsami.study_ids(), "a peer retired a study it did not send"
    # without its client certificate nginx refuses before Orthanc is asked
    bare = {"ca_file": tls["ca_file"], "cert_file": tls["cert_file"], "key_file": tls["key_file"]}
    assert https_call(rtsami, "peer-all-lami", "wrong-password", bare, "GET", "/system") == 401


# --- defect 2 in Orthanc: the LAMI's index restored from a backup --------------------------------


def test_a_restored_lami_index_resets_the_feed_and_skips_nothing(make_node, tsami):
    lami = make_node(mode="all")
    a = make_study(2)
    lami.store(a)
    wait_delivered(tsami, a)
    wait_for(lambda: lami.status()["queue_depth"] == 0, 30, message="idle")
    lami.orthanc.stop()
    backup = lami.orthanc.workdir / "db-backup"
    shutil.copytree(lami.orthanc.db_dir, backup)
    lami.orthanc.start()
    for _ in range(3):
        s = make_study(2)
        lami.store(s)
        wait_delivered(tsami, s)
    wait_for(lambda: lami.status()["changes_seq"] >= lami.get("/changes?last")["Last"], 30,
             message="the plugin to read every change")
    saved = lami.status()["changes_seq"]
    lami.orthanc.stop()
    shutil.rmtree(lami.orthanc.db_dir)
    shutil.move(backup, lami.orthanc.db_dir)                  # the index restored from the backup
    lami.orthanc.start()
    assert lami.get("/changes?last")["Last"] < saved
    after = make_study(2)                                     # numbered below the saved position
    lami.store(after)
    wait_delivered(tsami, after)
    st = lami.status()
    assert st["feed"]["resets"] == 1 and "restarted" in st["feed"]["last_reset"]["reason"]
    wait_for(lambda: full_pass_done(lami, 1), 60, message="the full pass the reset asked for")


# --- defect 7: a file lost from the LAMI's storage ---------------------------------------------------


def test_a_file_lost_from_the_lamis_storage_is_an_alarm(make_node, tsami):
    lami = make_node(mode="on-demand")
    study = make_study(3)
    lami.store(study)
    lami.wait_processed(study)
    victim = lami.get(f"/studies/{study.orthanc_id()}/instances")[1]["ID"]
    uuid = lami.get(f"/instances/{victim}/attachments/dicom/info")["Uuid"]
    lami.orthanc.stop()
    (lami.orthanc.db_dir / uuid[0:2] / uuid[2:4] / uuid).unlink()
    lami.orthanc.start()
    lami.replicate(study=study.study_uid)
    st = wait_for(lambda: (s := lami.status())["storage_errors"] == 1 and s, 60, message="the storage alarm")
    assert any("storage loss" in a for a in st["alarms"])
    assert "STORAGE LOSS" in st["last_error"]["message"] and victim in st["last_error"]["message"]
    assert st["gone"] == 0 and st["delivered"] == 0 and st["queue_depth"] == 1
    problems = lami.get("/kontur/replication/problems")
    assert problems["storage_errors"][0]["study_id"] == study.orthanc_id()
    assert "kontur_replication_storage_errors" in lami.get("/kontur/replication/metrics")


# --- defect 7: a 404 from a routing mistake is the link's problem --------------------------------------


def test_a_404_from_a_routing_mistake_backs_off_and_never_parks(make_node, tsami):
    lami = make_node(mode="all", upstream_url=tsami.url + "wrong-prefix/")
    study = make_study(1)
    lami.store(study)
    st = wait_for(lambda: (s := lami.status())["failed"] >= 1 and s, 60, message="a failed attempt")
    assert st["parked"] == 0 and st["queue_depth"] == 1
    assert "404" in st["last_error"]["message"] and st["link"]["up"] is False


# --- defect 6: corrections --------------------------------------------------------------------------


def test_a_patient_id_fixed_at_the_lami_replaces_the_tsami_copy_never_leaving_neither(lami_of, rtsami):
    lami = lami_of()
    tsami = rtsami.orthanc
    wrong = make_study(3, patient_id="WRONG-123", patient_name="Петров^Пётр")
    lami.store(wrong)
    wait_delivered(tsami, wrong)
    old_id = wrong.orthanc_id()
    pid = lami.get(f"/studies/{old_id}")["ParentPatient"]
    answer = lami.post(f"/patients/{pid}/modify", {"Replace": {"PatientID": "RIGHT-123"}, "Force": True,
                                                   "KeepSource": False})
    new_id = lami.get(f"/patients/{answer['ID']}")["Studies"][0]
    assert tsami.sop_uids_of_study(new_id) == set()      # the LAMI waits StableAge before it sends
    samples: list[tuple[int, int]] = []
    stop = threading.Event()

    def sample():
        # the old study first, then the new: once the old one shrinks, the new one must be whole
        while not stop.is_set():
            samples.append((len(tsami.sop_uids_of_study(old_id)), len(tsami.sop_uids_of_study(new_id))))
            stop.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        wait_for(lambda: len(tsami.sop_uids_of_study(new_id)) == 3 and not tsami.sop_uids_of_study(old_id),
                 90, interval=0.2, message="the corrected study alone at the TsAMI")
    finally:
        stop.set()
        th.join()
    bad = [(k, o, n) for k, (o, n) in enumerate(samples) if not (o == 3 or n == 3)]
    assert samples and not bad, f"the TsAMI held neither version: {bad[:5]} of {len(samples)} samples"
    assert tsami.study_ids() == [new_id]
    assert tsami.get(f"/studies/{new_id}")["PatientMainDicomTags"]["PatientID"] == "RIGHT-123"
    audit = upstream_audit(rtsami)
    assert any(a["actor"] == "peer-all-lami" and "retired" in a["action"] and old_id in a["subject"] for a in audit)
    local = lami.get("/kontur/replication/problems")["audit"]
    assert any("correction applied upstream" in a["action"] for a in local)


def test_the_same_uids_again_with_other_content_replace_the_tsami_copy(lami_of, rtsami, tmp_path):
    lami = lami_of()
    tsami = rtsami.orthanc
    first = make_study(2, patient_name="Иванов^Иван")
    lami.store(first)
    wait_delivered(tsami, first)
    wait_for(lambda: lami.status()["queue_depth"] == 0, 30, message="idle")
    # the study is deleted at the LAMI and the modality sends it again, corrected, with the same UIDs
    lami.delete(f"/studies/{first.orthanc_id()}")
    again = [make_instance(patient_id=i.patient_id, patient_name="Иванова^Мария", study_uid=i.study_uid,
                           series_uid=i.series_uid, sop_uid=i.sop_uid, instance_number=k + 1)
             for k, i in enumerate(first.instances)]
    storescu([_write(tmp_path, i) for i in again], port=lami.dicom_port, called_aet=lami.aet,
             calling_aet=SCU_AET)
    sid = first.orthanc_id()
    wait_for(lambda: tsami.get(f"/studies/{sid}")["PatientMainDicomTags"]["PatientName"] == "Иванова^Мария", 90,
             interval=0.5, message="the corrected name at the TsAMI")
    for inst in tsami.get(f"/studies/{sid}/instances"):
        assert tsami.get(f"/instances/{inst['ID']}/simplified-tags")["PatientName"] == "Иванова^Мария"
    assert sorted(tsami.all_sop_uids()) == sorted(first.sop_uids)
    assert sum("replaced" in a["action"] for a in upstream_audit(rtsami)) == 2


def test_reject_a_wrong_series_removes_it_here_and_there_but_not_what_others_sent(lami_of, rtsami):
    lami = lami_of()
    tsami = rtsami.orthanc
    study = make_study(4, n_series=2)
    lami.store(study)
    wait_delivered(tsami, study)
    wrong_uid = study.instances[1].series_uid
    series_id = next(s for s in lami.get(f"/studies/{study.orthanc_id()}/series")
                     if s["MainDicomTags"]["SeriesInstanceUID"] == wrong_uid)["ID"]
    # someone else put an instance into that series at the TsAMI: not this LAMI's to delete
    other = make_instance(patient_id=study.patient_id, patient_name=study.patient_name, study_uid=study.study_uid,
                          series_uid=wrong_uid)
    tsami.upload(other.data)
    r = lami.post("/kontur/correct", {"action": "reject", "series": series_id, "reason": "series of another patient"})
    assert r["correction"] and r["upstream"] == "queued"
    keep = {i.sop_uid for i in study.instances if i.series_uid != wrong_uid}
    wait_for(lambda: tsami.sop_uids_of_study(study.orthanc_id()) == keep | {other.sop_uid}, 60,
             message="the wrong series retired at the TsAMI")
    assert lami.sop_uids_of_study(study.orthanc_id()) == keep
    # applied: the LAMI records it right after the TsAMI answered (no longer among the open ones)
    wait_for(lambda: not [c for c in lami.get("/kontur/replication/problems")["corrections"]
                          if c["id"] == r["correction"]], 30, message="the correction recorded as applied")
    assert lami.status()["corrections"]["done"] == 1
    audit = upstream_audit(rtsami)
    assert any(a["reason"] == "series of another patient" and json.loads(a["detail"])["foreign"] == 1 for a in audit)
    # a reason is required, and an unknown series is a 404
    from kontur.testing.replication import http_status
    assert http_status(lami.post, "/kontur/correct", {"action": "reject", "series": series_id})[0] == 400
    assert http_status(lami.post, "/kontur/correct", {"action": "reject", "series": series_id,
                                                      "reason": "again"})[0] == 404


def _write(tmp_path, inst) -> Path:
    p = tmp_path / "again" / f"{inst.sop_uid}.dcm"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(inst.data)
    return p
