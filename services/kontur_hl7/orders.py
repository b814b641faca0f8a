# SPDX-License-Identifier: AGPL-3.0-or-later
"""What an inbound HL7 v2.5 message asks for (issue 11).  Pure: text in,
:class:`Request` out, or :class:`Reject` with the HL7 error code (table 0357),
the field it is about and a sentence for MSA-3 / ERR-8.

Messages read (reglament 004 §2.2 steps 3-6; seed 002, the MIAC's exchange):

``ORM^O01``, ``OMI^O23``  orders: ORC-1 ``NW`` new, ``XO`` change, ``CA`` /
                          ``DC`` cancel, ``HD`` hold, ``RL`` release
``ADT^A08``               the patient's demographics changed
``ADT^A40``               two patient records merged (MRG-1: the one that goes)

Where a value comes from (first found):

=====================  ====================================================
accession number       IPC-1, OBR-18, ORC-3 (filler order number)
procedure              OBR-4 (code ^ name ^ coding system)
modality               IPC-5, OBR-24
device                 IPC-9 (AE title), IPC-7 (station name); none: every
                       modality of that type at the ordering hospital
scheduled date/time    TQ1-7, ORC-7.4, OBR-27.4, OBR-36, OBR-7
priority               TQ1-9, ORC-7.6, OBR-27.6, OBR-5 (S / A: urgent)
Study Instance UID     IPC-3 (else the service makes one)
=====================  ====================================================
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import hl7

ORDER_TYPES = ("ORM^O01", "OMI^O23")
ADT_TYPES = ("ADT^A08", "ADT^A40")
TYPES = ORDER_TYPES + ADT_TYPES
ORDER_CONTROLS = {"NW": "new", "XO": "change", "CA": "cancel", "DC": "cancel", "OC": "cancel",
                  "HD": "hold", "RL": "release"}
URGENT = {"S": "STAT", "A": "HIGH"}
PRIORITIES = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "LOW", "C": "HIGH", "T": "MEDIUM"}
_TS = re.compile(r"^(\d{8})(\d{2,6})?")


class Reject(Exception):
    """A message that cannot be accepted.  ``ack``: AR (the message itself is
    wrong: do not resend it as is) or AE (it cannot be applied now)."""

    def __init__(self, ack: str, code: int, text: str, where: str = ""):
        super().__init__(text)
        self.ack, self.code, self.text, self.where = ack, code, text, where


@dataclass
class Patient:
    id: str
    issuer: str = ""
    name: str = ""             # DICOM PN: Family^Given^Middle
    birth_date: str = ""       # YYYYMMDD
    sex: str = ""              # M F O


@dataclass
class Order:
    control: str               # new change cancel hold release
    accession: str
    placer: str = ""
    filler: str = ""
    procedure_code: str = ""
    procedure_name: str = ""
    procedure_scheme: str = ""
    modality: str = ""
    device_aet: str = ""
    station_name: str = ""
    scheduled: str = ""        # YYYYMMDDHHMMSS (what was sent, padded)
    priority: str = "ROUTINE"
    study_uid: str = ""
    department: str = ""

    @property
    def urgent(self) -> bool:
        return self.priority in ("STAT", "HIGH")


@dataclass
class Request:
    type: str                  # ORM^O01 ...
    control_id: str
    facility: str              # MSH-4, the sending facility
    application: str           # MSH-3
    version: str
    patient: Patient | None = None
    orders: list[Order] = field(default_factory=list)
    merged_from: Patient | None = None      # ADT^A40: the record that goes


def _get(seg, f: int, comp: int = 1, rep: int = 1, sub: int = 1) -> str:
    try:
        value = seg.extract_field(1, f, rep, comp, sub)
    except (IndexError, KeyError, AttributeError, TypeError):
        return ""
    return str(value or "").strip()


def _segment(msg, name: str):
    try:
        return msg.segment(name)
    except KeyError:
        return None


def _segments(msg, name: str) -> list:
    try:
        return list(msg.segments(name))
    except KeyError:
        return []


def _unescape(msg, value: str) -> str:
    return msg.unescape(value) if "\\" in value else value


def parse(text: str) -> Request:
    """The request a message's text makes; raises :class:`Reject`."""
    body = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c")
    if not body.startswith("MSH"):
        raise Reject("AR", 100, "the message does not start with an MSH segment", "MSH")
    try:
        msg = hl7.parse(body)
    except Exception as exc:  # noqa: BLE001 - python-hl7 raises several kinds
        raise Reject("AR", 102, f"the message cannot be parsed: {exc}") from None
    msh = _segment(msg, "MSH")
    if msh is None:
        raise Reject("AR", 100, "no MSH segment", "MSH")
    mtype = "^".join(x for x in (_get(msh, 9, 1), _get(msh, 9, 2)) if x)
    control_id = _get(msh, 10)
    if not control_id:
        raise Reject("AR", 101, "MSH-10 (Message Control ID) is empty", "MSH^1^10")
    version = _get(msh, 12)
    if version and not version.startswith("2."):
        raise Reject("AR", 203, f"MSH-12 (Version ID) is {version!r}; expected HL7 v2 (2.5)", "MSH^1^12")
    if mtype not in TYPES:
        raise Reject("AR", 200, f"message type {mtype or '(empty)'!r} is not read here; expected one of "
                                + ", ".join(TYPES), "MSH^1^9")
    req = Request(mtype, control_id, _get(msh, 4), _get(msh, 3), version)
    req.patient = _patient(msg, _segment(msg, "PID"), "PID")
    if mtype in ORDER_TYPES:
        req.orders = _orders(msg)
    elif mtype == "ADT^A40":
        mrg = _segment(msg, "MRG")
        if mrg is None:
            raise Reject("AR", 100, "ADT^A40 without an MRG segment (the patient record merged away)", "MRG")
        prior = _get(mrg, 1)
        if not prior:
            raise Reject("AR", 101, "MRG-1 (Prior Patient Identifier List) is empty", "MRG^1^1")
        req.merged_from = Patient(prior, _get(mrg, 1, 4))
    return req


def _patient(msg, pid, where: str) -> Patient:
    if pid is None:
        raise Reject("AR", 100, "no PID segment (the patient)", where)
    pid_id = _get(pid, 3)
    if not pid_id:
        raise Reject("AR", 101, "PID-3 (Patient Identifier List) is empty", "PID^1^3")
    family, given, middle = (_unescape(msg, _get(pid, 5, c)) for c in (1, 2, 3))
    name = "^".join([family, given, middle]).rstrip("^")
    birth = _get(pid, 7)[:8]
    if birth and not re.fullmatch(r"\d{8}", birth):
        raise Reject("AE", 102, f"PID-7 (Date of Birth) is {birth!r}; expected YYYYMMDD", "PID^1^7")
    sex = _get(pid, 8).upper()[:1]
    return Patient(pid_id, _get(pid, 3, 4), name, birth, sex if sex in ("M", "F", "O") else ("O" if sex else ""))


def _ts(value: str) -> str:
    m = _TS.match(value or "")
    if not m:
        return ""
    return (m.group(1) + (m.group(2) or "")).ljust(14, "0")


def _orders(msg) -> list[Order]:
    orcs = _segments(msg, "ORC")
    if not orcs:
        raise Reject("AR", 100, "no ORC segment (the order)", "ORC")
    # group each ORC with the OBR, TQ1 and IPC segments that follow it
    groups: list[dict] = []
    for seg in msg:
        name = str(seg[0])
        if name == "ORC":
            groups.append({"ORC": seg})
        elif groups and name in ("OBR", "TQ1", "IPC") and name not in groups[-1]:
            groups[-1][name] = seg
    out = []
    for n, g in enumerate(groups, 1):
        orc, obr, tq1, ipc = g["ORC"], g.get("OBR"), g.get("TQ1"), g.get("IPC")
        code = _get(orc, 1).upper()
        control = ORDER_CONTROLS.get(code)
        if control is None:
            raise Reject("AR", 103, f"ORC-1 (Order Control) {code or '(empty)'!r} of order {n} is not read here; "
                                    f"expected one of {', '.join(ORDER_CONTROLS)}", f"ORC^{n}^1")
        if obr is None and control in ("new", "change"):
            raise Reject("AR", 100, f"order {n} ({code}) has no OBR segment (the procedure)", "OBR")

        def first(*values: str) -> str:
            return next((v for v in values if v), "")

        accession = first(_get(ipc, 1) if ipc else "", _get(obr, 18) if obr else "", _get(orc, 3))
        if not accession:
            raise Reject("AR", 101, f"order {n} has no accession number (IPC-1, OBR-18 or ORC-3)", f"ORC^{n}^3")
        o = Order(control, accession, placer=_get(orc, 2), filler=_get(orc, 3))
        if obr is not None:
            o.procedure_code = _get(obr, 4, 1)
            o.procedure_name = _unescape(msg, _get(obr, 4, 2))
            o.procedure_scheme = _get(obr, 4, 3)
            o.modality = first(_get(ipc, 5) if ipc else "", _get(obr, 24)).upper()
            o.scheduled = _ts(first(_get(tq1, 7) if tq1 else "", _get(orc, 7, 4), _get(obr, 27, 4),
                                    _get(obr, 36), _get(obr, 7)))
            raw_priority = first(_get(tq1, 9) if tq1 else "", _get(orc, 7, 6), _get(obr, 27, 6), _get(obr, 5))
            o.priority = PRIORITIES.get(raw_priority.upper()[:1], "ROUTINE") if raw_priority else "ROUTINE"
        if ipc is not None:
            o.device_aet = _get(ipc, 9)
            o.station_name = _get(ipc, 7)
            o.study_uid = _get(ipc, 3)
        o.department = first(_get(orc, 17, 1), _get(orc, 13, 1))
        if control in ("new", "change") and not o.procedure_code:
            raise Reject("AR", 101, f"order {accession}: OBR-4 (Universal Service Identifier) has no code",
                         "OBR^1^4")
        if o.study_uid and not re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))+", o.study_uid):
            raise Reject("AE", 102, f"order {accession}: IPC-3 {o.study_uid!r} is not a DICOM UID", "IPC^1^3")
        out.append(o)
    return out
