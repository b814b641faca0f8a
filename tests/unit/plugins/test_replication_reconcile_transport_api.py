"""Reconciliation diff logic, the transport's error sorting, the REST API."""
from __future__ import annotations

import json

import pytest

from kontur_plugins.replication import api, reconcile, transport
from kontur_plugins.replication.engine import BadRequest, UnknownStudy


def test_orthanc_study_id_matches_orthanc():
    # observed from Debian's Orthanc 1.10.1 for this PatientID and StudyInstanceUID
    assert reconcile.orthanc_study_id(
        "P9623570790", "1.2.826.0.1.3680043.8.498.54768200758388268611035964962555148952"
    ) == "58ab2d2d-f7db5618-166c3522-60fc485a-1a583955"


def test_missing_and_verified():
    assert reconcile.missing_instances({"c", "a", "b"}, {"b"}) == ["a", "c"]
    assert reconcile.verified({"a"}, {"a", "b"})          # the upstream may hold more
    assert not reconcile.verified({"a", "c"}, {"a", "b"})


def test_set_digest_is_order_free_and_set_exact():
    assert reconcile.set_digest(["b", "a"]) == reconcile.set_digest({"a", "b"}) == reconcile.set_digest(["a", "b", "a"])
    assert reconcile.set_digest(["a", "b"]) != reconcile.set_digest(["a", "c"])      # same count, other set
    assert reconcile.set_digest([]) == reconcile.EMPTY_DIGEST


def test_compare_sets():
    c = reconcile.compare_sets("s", {"a", "b", "c"}, {"b", "x"})
    assert (c.missing, c.extra, c.local, c.remote, c.complete) == (("a", "c"), ("x",), 3, 2, False)
    assert reconcile.compare_sets("s", {"a"}, {"a", "b"}).complete


def test_known_local_digest_only_when_unchanged_since_verified():
    row = {"state": "delivered", "delivered_count": 7, "delivered_last_update": "20250101T101010",
           "delivered_digest": "d" * 40}
    assert reconcile.known_local_digest(row, "20250101T101010") == (7, "d" * 40)
    assert reconcile.known_local_digest(row, "20250102T000000") is None
    assert reconcile.known_local_digest({**row, "state": "pending"}, "20250101T101010") is None
    assert reconcile.known_local_digest({**row, "delivered_digest": None}, "20250101T101010") is None
    assert reconcile.known_local_digest(None, "x") is None


def test_parse_change_batch_keeps_what_matters_in_order():
    changes = [
        {"ChangeType": "NewInstance", "ID": "i1", "ResourceType": "Instance", "Seq": 1},
        {"ChangeType": "NewSeries", "ID": "se", "ResourceType": "Series", "Seq": 2},
        {"ChangeType": "StableStudy", "ID": "st", "ResourceType": "Study", "Seq": 3},
        {"ChangeType": "StablePatient", "ID": "p", "ResourceType": "Patient", "Seq": 4},
        {"ChangeType": "NewInstance", "ID": "i2", "ResourceType": "Instance", "Seq": 5},
    ]
    assert reconcile.parse_change_batch(changes) == [
        ("NewInstance", "i1", 1), ("StableStudy", "st", 3), ("NewInstance", "i2", 5)]


@pytest.mark.parametrize("status,kind", [
    (200, None), (400, transport.TransientError), (404, transport.TransientError), (413, transport.TransientError),
    (401, transport.TransientError), (403, transport.TransientError), (408, transport.TransientError),
    (429, transport.TransientError), (500, transport.TransientError), (503, transport.TransientError),
])
def test_classify_requests_that_name_no_instance(status, kind):
    """A listing or a probe that fails is the link's or the configuration's problem, never a refusal."""
    err = transport.classify(status, b'{"Message": "Bad file format", "Details": "x"}')
    assert (err is None) if kind is None else isinstance(err, kind)
    if err is not None:
        assert f"HTTP {status}" in str(err)


class FakeEngine:
    def __init__(self):
        self.calls = []

    def status(self):
        return {"enabled": True, "node": "n", "upstream": {"name": "tsami"}, "queue_depth": 2,
                "oldest_pending_age_seconds": 12.5, "in_flight": None, "delivered": 1, "failed": 0, "parked": 0,
                "held": 0, "overdue": 0, "window_open": True, "link": {"up": True}, "counters": {},
                "changes_seq": 3, "bandwidth_mbit": 50}

    def parked(self):
        return [{"study_id": "x", "reason": "refused"}]

    def request(self, **kw):
        self.calls.append(kw)
        if kw.get("study") == "missing":
            raise UnknownStudy("study missing is not in this archive")
        if kw.get("study") == "boom":
            raise RuntimeError("kaboom")
        return [{"study": "s", "state": "pending", "urgent": kw["urgent"]}]

    def flag(self, study, pathology):
        return {"study_uid": study, "pathology": pathology, "studies": []}


def call(engine, method, path, body=None, logs=None):
    status, ctype, data = api.handle(engine, method, path, body,
                                     log_error=logs.append if logs is not None else print)
    return status, (json.loads(data) if ctype == api.JSON else data.decode())


@pytest.mark.parametrize("body", [None, b"", b"nope", b"[]", b'{"study": 1}', b'{"study": ""}',
                                  b'{"study": "a", "patient": "b"}', b"{}", b'{"study": "a", "urgent": 1}',
                                  b'{"study": "a", "extra": true}', b"\xff\xfe"])
def test_bad_replicate_bodies_get_400(body):
    status, answer = call(FakeEngine(), "POST", "/kontur/replicate", body)
    assert status == 400 and answer["error"]


def test_routes_and_errors():
    e = FakeEngine()
    assert call(e, "GET", "/kontur/replication")[1]["queue_depth"] == 2
    status, text = call(e, "GET", "/kontur/replication/metrics")
    assert status == 200 and 'kontur_replication_queue_depth{node="n",upstream="tsami"} 2' in text
    assert call(e, "GET", "/kontur/replication/parked")[1]["parked"][0]["reason"] == "refused"
    status, answer = call(e, "POST", "/kontur/replicate", b'{"study": "1.2.3", "urgent": true}')
    assert status == 202 and answer["queued"][0]["urgent"] is True
    assert e.calls[-1] == {"study": "1.2.3", "patient": None, "urgent": True}
    assert call(e, "POST", "/kontur/replicate", b'{"study": "missing"}')[0] == 404
    assert call(e, "GET", "/kontur/replicate")[0] == 405
    assert call(e, "POST", "/kontur/flag", b'{"study": "1.2.3"}')[1]["pathology"] is True
    assert call(e, "POST", "/kontur/flag", b'{"study": "1.2.3", "pathology": "yes"}')[0] == 400
    assert call(None, "GET", "/kontur/replication")[0] == 503


def test_an_exception_becomes_500_and_is_logged():
    logs = []
    status, answer = call(FakeEngine(), "POST", "/kontur/replicate", b'{"study": "boom"}', logs)
    assert status == 500 and "RuntimeError" in answer["error"]
    assert logs and "kaboom" in logs[0]
