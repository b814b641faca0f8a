"""A study's way across the region (issue 12, "status online"): the steps
with their times from the HL7 service's state and the node's outbox events."""
from __future__ import annotations

from kontur_plugins.worklist import status


def facts(**kw):
    base = {"accession": "ACC1", "study_uid": "1.2.3",
            "order": {"facility": "ONCO", "accession": "ACC1", "created_at": 100.0, "patient_id": "12345",
                      "urgent": 1},
            "items": [{"aet": "ONCO_CT1", "status": "COMPLETED", "updated_at": 100.0}],
            "mpps": [{"status": "COMPLETED", "aet": "ONCO_CT1", "created_at": 200.0, "updated_at": 300.0}],
            "events": [{"kind": "archived", "at": 310.0, "detail": None},
                       {"kind": "validated", "at": 311.0, "detail": None},
                       {"kind": "archived", "at": 900.0, "detail": None},        # late instances: first time kept
                       {"kind": "delivered", "at": 400.0, "detail": "3 instances"}],
            "results": [{"status": "final", "state": "attached", "pathology": 1, "attached_at": 350.0}],
            "notifications": [{"kind": "started", "state": "sent", "sent_at": 201.0, "url": "https://l/v/1"},
                              {"kind": "delivered", "state": "pending", "sent_at": None, "url": "https://l/v/1"}]}
    base.update(kw)
    return base


def test_the_steps_come_in_the_order_they_happened_each_at_its_first_time():
    t = status.timeline(facts())
    assert [s["step"] for s in t["steps"]] == ["ordered", "worklist", "started", "notified", "completed",
                                               "archived", "validated", "report", "delivered"]
    archived = next(s for s in t["steps"] if s["step"] == "archived")
    assert archived["at"] == "1970-01-01T00:05:10+00:00"
    assert next(s for s in t["steps"] if s["step"] == "report")["detail"] == "final, pathology"
    assert next(s for s in t["steps"] if s["step"] == "notified")["detail"] == "started"
    assert t["to_come"] == [] and t["viewer_url"] == "https://l/v/1" and t["patient_id"] == "12345"


def test_what_is_still_to_come_and_what_a_node_never_does():
    t = status.timeline(facts(mpps=[], events=[{"kind": "archived", "at": 310.0}], results=[], notifications=[]))
    # a device without MPPS: no "started"; a node without validation: no "validated"
    assert status.timeline(facts(mpps=[], events=[{"kind": "archived", "at": 310.0}], results=[],
                                 notifications=[]), expect_validation=False)["to_come"] == \
        ["report", "delivered", "notified"]
    assert t["to_come"] == ["validated", "report", "delivered", "notified"]
    q = status.timeline(facts(events=[{"kind": "quarantined", "at": 320.0, "detail": "procedure code missing"}]))
    assert "validated" not in q["to_come"] and q["steps"][-1]["step"] in ("quarantined", "report", "notified")


def test_bad_values_are_refused_and_unknown_ones_are_not_found():
    assert status.answer(None, lambda sql, args=(): [], "1' OR 1=1")[0] == 400
    assert status.answer(None, lambda sql, args=(): [], "<script>")[0] == 400
    assert status.answer(None, lambda sql, args=(): [], "x" * 65)[0] == 400
    code, body = status.answer(None, lambda sql, args=(): [], "NOPE1")
    assert code == 404 and "NOPE1" in body["error"]
    assert status.is_uid("1.2.840.10008") and not status.is_uid("ACC1") and not status.is_uid("1.02.3")
