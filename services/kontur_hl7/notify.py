# SPDX-License-Identifier: AGPL-3.0-or-later
"""Notifications to the hospital's MIS (issue 12; reglament 004 §2.2 steps
6-8, §4.2): what happened to an order's study, with the URL that opens it.
Pure: facts in, the HL7 v2.5 message out.

Each is an ``ORU^R01`` (as dcm4chee-arc sends its procedure status updates):
ORC-1 ``SC`` (status changed) with ORC-5 the order's status, OBR-25 the
result status, an OBX naming the event in words, an OBX ``RP`` (reference
pointer) with the viewer URL, and with a report its conclusion.  The control
ID is derived from the event, so a notification sent twice (the MIS's ACK
lost) is the same message and the MIS can tell.

=============  ==================================  =======  ======
event          when                                ORC-5    OBR-25
=============  ==================================  =======  ======
``started``    the device's MPPS IN PROGRESS       IP       I
``archived``   the study complete on the node      CM       R
``report``     the result attached to the study    CM       F (P, C)
``delivered``  the study verified at the TsAMI     CM       R
=============  ==================================  =======  ======
"""
from __future__ import annotations

import datetime as dt
import hashlib
from urllib.parse import quote

from .ack import escape

EVENTS = {
    "started": ("IP", "I", "Исследование начато"),
    "archived": ("CM", "R", "Исследование сохранено в ЛАМИ"),
    "report": ("CM", "F", "Заключение прикреплено к исследованию"),
    "delivered": ("CM", "R", "Исследование передано в ЦАМИ"),
}
RESULT_STATUS = {"final": "F", "corrected": "C", "preliminary": "P"}


def control_id(kind: str, facility: str, accession: str, extra: str = "") -> str:
    """The notification's MSH-10: the same event always gets the same one (at most 20 characters)."""
    h = hashlib.sha256(f"{kind}\0{facility}\0{accession}\0{extra}".encode()).hexdigest()[:16]
    return f"N{kind[0].upper()}{h}"


def _components(value: str) -> str:
    """A composite value (a PN, a code ^ name ^ scheme): each component escaped, the ^ kept."""
    return "^".join(escape(x) for x in (value or "").split("^"))


def viewer_url(template: str, patient_id: str, accession: str, study_uid: str) -> str:
    """The study's URL (reglament §4.2: the patient, the order and the performed study in it):
    ``template`` has ``{patient}``, ``{accession}``, ``{study}``; each value percent-encoded."""
    if not template:
        return ""
    return template.format(patient=quote(patient_id or "-", safe=""), accession=quote(accession or "-", safe=""),
                           study=quote(study_uid or "-", safe=""))


def message(kind: str, *, control: str, facility: str, application: str, accession: str, patient: dict,
            study_uid: str = "", url: str = "", procedure: str = "", report: dict | None = None,
            now: dt.datetime | None = None) -> str:
    """The ER7 text of one notification (segments joined by CR)."""
    orc5, obr25, words = EVENTS[kind]
    if report is not None:
        obr25 = RESULT_STATUS.get(report.get("status", "final"), "F")
    now = now or dt.datetime.now(dt.timezone.utc)
    ts = f"{now:%Y%m%d%H%M%S}"
    pid = escape(patient.get("id", ""))
    name = _components(patient.get("name", ""))
    segs = [
        "|".join(["MSH", "^~\\&", escape(application), escape(application), "MIS", escape(facility), ts, "",
                  "ORU^R01^ORU_R01", control, "P", "2.5", "", "", "", "", "", "UNICODE UTF-8"]),
        f"PID|1||{pid}^^^{escape(facility)}||{name}",
        f"ORC|SC||{escape(accession)}||{orc5}",
        "|".join(["OBR", "1", "", escape(accession), _components(procedure), "", "", ts] + [""] * 10
                 + [escape(accession), "", "", "", ts, "", "", obr25]),
        f"OBX|1|ST|KONTUR-EVENT^Событие^L||{escape(words)}||||||F",
    ]
    n = 1
    if url:
        n += 1
        segs.append(f"OBX|{n}|RP|VIEWER^Просмотр исследования^L||{escape(url)}^KONTUR^TEXT^HTML||||||F")
    if report is not None and report.get("conclusion"):
        n += 1
        lines = "~".join(escape(x) for x in report["conclusion"].splitlines())
        segs.append(f"OBX|{n}|TX|19005-8^Заключение^LN||{lines}||||||{obr25}")
    if study_uid:
        segs.append(f"ZDS|{escape(study_uid)}^KONTUR^Application^DICOM")
    return "\r".join(segs) + "\r"
