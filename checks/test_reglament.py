"""The reglament's requirements per hospital (seed 004 §5.1–5.6), read live
from the hospitals' nodes: responsible staff recorded, studies delivered to
the TsAMI within the deadline, the quarantine's summary."""
from __future__ import annotations

import json

import pytest

from remote import as_service

control = pytest.mark.control


@control("KONTUR-REG-01", ref="reglament 004 §5.2: responsible staff with work and mobile phones", impact=0.7)
@pytest.mark.roles("lami", "gateway", "reference")
def test_responsible_staff_are_recorded(target, node):
    region = target.region
    hospitals = [k for k, h in region.hospitals.items() if h.node == node]
    missing = [k for k in hospitals if not region.hospitals[k].staff]
    assert hospitals, f"no hospital of the inventory is served by {node}"
    assert not missing, f"no responsible person recorded (inventory: hospitals.X.staff) for {', '.join(missing)}"


def _replication(host, target, node) -> dict:
    status, text = as_service(host, target.region.ports(node).http, "/kontur/replication")
    assert status == 200, f"GET /kontur/replication answered {status}"
    return json.loads(text)


@control("KONTUR-REG-02", ref="reglament 004 §5.4: studies reach the TsAMI within the deadline", impact=1.0)
@pytest.mark.roles("lami", "gateway")
def test_studies_are_delivered_within_the_deadline(host, target, node):
    rep = _replication(host, target, node)
    assert rep.get("enabled"), f"replication is disabled: {rep.get('reason')}"
    assert not rep.get("overdue"), (
        f"{rep['overdue']} study(ies) undelivered past the {rep.get('deadline_hours')} h deadline "
        f"(oldest waiting {float(rep.get('oldest_pending_age_seconds') or 0) / 3600:.1f} h; "
        f"link {'up' if (rep.get('link') or {}).get('up') else 'down'})")
    assert not rep.get("alarms"), "; ".join(rep["alarms"])


@control("KONTUR-REG-03", ref="reglament 004 §5.6: the transfer package; held studies corrected or released",
         impact=0.5)
@pytest.mark.roles("lami", "gateway")
def test_no_study_is_left_in_quarantine(host, target, node):
    transfer = _replication(host, target, node).get("transfer") or {}
    if transfer.get("mode") != "enforce":
        pytest.skip(f"the transfer package is in {transfer.get('mode') or 'no'} mode here: nothing is held back")
    held = int(transfer.get("quarantined") or 0) - int(transfer.get("released") or 0)
    reasons = ", ".join(f"{r['reason']} ({r['studies']})" for r in transfer.get("top_reasons") or [])
    assert held <= 0, f"{held} study(ies) held in quarantine (kontur quarantine list): {reasons}"
