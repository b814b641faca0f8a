# SPDX-License-Identifier: AGPL-3.0-or-later
"""What an inbound HL7 v2.5 message asks for (issue 11).  Pure: text in,
:class:`Request` out, or :class:`Reject` with the HL7 error code (table 0357),
the field it is about and a sentence for MSA-3 / ERR-8.

Messages read (reglament 004 §2.2 steps 3-6; seed 002, the MIAC's exchange):

``ORM^O01``, ``OMI^O23``  orders: ORC-1 ``NW`` new, ``XO`` change, ``CA`` /
                          ``DC`` cancel, ``HD`` hold, ``RL`` release
``ADT^A08``               the patient's demographics changed
``ADT^A40``               two patient records merged (MRG-1: the one that goes)
``ORU^R01``               the result of a study: the protocol and conclusion
                          (OBX), its status (OBX-11 / OBR-25: F final,
                          C corrected, P preliminary) and abnormal flags (OBX-8)

Where a value comes from (first found):

=====================  ====================================================
accession number       IPC-1, OBR-18, ORC-3 (filler order number)
procedure              OBR-4 (code ^ name ^ coding system)
modality               IPC-5, OBR-24
device                 IPC-9 (AE title), IPC-7 (station name); none: every
                       modality of that type at the ordering hospital
scheduled date/time    TQ1-7, ORC-7.4, OBR-27.4, OBR-36, OBR-7
priority               TQ1-9, ORC-7.6, OBR-27.6, OBR-5 (S / A: urgent)
Study Instance UID     IPC-3 (else the service makes one); in a result
                       ZDS-1, an OBX 113014 (DICOM "Study"), else the order's
=====================  ====================================================

In a result, OBX segments whose identifier (OBX-3) is an impression
(``IMP``, LOINC 19005-8, or a name with "заключ" / "impression") are the
conclusion; the other text OBX (TX, FT, ST) the protocol.  OBX-16 is the
radiologist, OBX-14 (else OBR-7) when.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import hl7

ORDER_TYPES = ("ORM^O01", "OMI^O23")
ADT_TYPES = ("ADT^A08", "ADT^A40")
RESULT_TYPES = ("ORU^R01",)
TYPES = ORDER_TYPES + ADT_TYPES + RESULT_TYPES
#: HL7 table 0078 (abnormal flags) values that mean a finding outside normal
ABNORMAL = {"A", "AA", "H", "HH", "L", "LL", "<", ">"}
#: OBX-11 / OBR-25 result statuses read (HL7 table 0085)
RESULT_STATUSES = {"F": "final", "C": "corrected", "P": "preliminary"}
TEXT_TYPES = ("TX", "FT", "ST")
IMPRESSION_IDS = {"IMP", "19005-8", "CONCLUSION", "ЗАКЛЮЧЕНИЕ"}
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
    result: "Result | None" = None           # ORU^R01


@dataclass
class Result:
    """A study's result (report) as the MIS or RIS sends it."""
    accession: str
    status: str                # final corrected preliminary
    findings: str = ""         # the protocol
    conclusion: str = ""
    flags: tuple[str, ...] = ()  # OBX-8 values seen
    codes: tuple[str, ...] = ()  # coded OBX values (CE/CWE: code) seen
    study_uid: str = ""
    observer: str = ""         # DICOM PN of OBX-16
    observed: str = ""         # YYYYMMDDHHMMSS

    @property
    def abnormal(self) -> bool:
        return any(f in ABNORMAL for f in self.flags)


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
    elif mtype in RESULT_TYPES:
        req.result = _result(msg)
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


def _result(msg) -> Result:
    obr = _segment(msg, "OBR")
    if obr is None:
        raise Reject("AR", 100, "ORU^R01 without an OBR segment (the study it reports)", "OBR")
    orc = _segment(msg, "ORC")
    accession = next((v for v in (_get(obr, 18), _get(obr, 3), _get(orc, 3) if orc is not None else "") if v), "")
    if not accession:
        raise Reject("AR", 101, "the result names no accession number (OBR-18, OBR-3 or ORC-3)", "OBR^1^3")
    obxs = _segments(msg, "OBX")
    if not obxs:
        raise Reject("AR", 100, f"result {accession}: no OBX segment (the report's text)", "OBX")
    findings, conclusion, flags, codes = [], [], [], []
    study_uid, observer, observed, statuses = "", "", "", []
    for n, obx in enumerate(obxs, 1):
        vtype = _get(obx, 2).upper()
        ident, ident_name = _get(obx, 3, 1).upper(), _unescape(msg, _get(obx, 3, 2)).lower()
        if not vtype:
            raise Reject("AR", 101, f"result {accession}: OBX {n} has no value type (OBX-2)", f"OBX^{n}^2")
        status = _get(obx, 11).upper()
        if status and status not in RESULT_STATUSES:
            raise Reject("AE", 103, f"result {accession}: OBX {n} status (OBX-11) {status!r} is not read here; "
                                    f"expected one of {', '.join(RESULT_STATUSES)}", f"OBX^{n}^11")
        if status:
            statuses.append(status)
        flag = _get(obx, 8).upper()
        if flag:
            flags.append(flag)
        if ident == "113014" or vtype == "HD" and "study" in ident_name:
            study_uid = _get(obx, 5)
            continue
        if vtype in ("CE", "CWE"):
            code = _get(obx, 5, 1)
            if code:
                codes.append(code)
            continue
        if vtype not in TEXT_TYPES:
            continue                # ED (an attached document), NM...: not the report's text
        value = _text_of(msg, obx)
        if ident in IMPRESSION_IDS or "заключ" in ident_name or "impression" in ident_name:
            conclusion.append(value)
        else:
            findings.append(value)
        observer = observer or _name(msg, obx, 16)
        observed = observed or _ts(_get(obx, 14))
    zds = _segment(msg, "ZDS")
    if zds is not None and not study_uid:
        study_uid = _get(zds, 1)
    if study_uid and not re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))+", study_uid):
        raise Reject("AE", 102, f"result {accession}: Study Instance UID {study_uid!r} is not a DICOM UID", "OBX")
    if not any(x.strip() for x in findings + conclusion):
        raise Reject("AR", 101, f"result {accession}: no OBX carries text (TX, FT or ST in OBX-2)", "OBX^1^5")
    status = "C" if "C" in statuses else (statuses[-1] if statuses else (_get(obr, 25).upper() or "F"))
    if status not in RESULT_STATUSES:
        raise Reject("AE", 103, f"result {accession}: status (OBR-25) {status!r} is not read here; expected one "
                                f"of {', '.join(RESULT_STATUSES)}", "OBR^1^25")
    return Result(accession, RESULT_STATUSES[status], "\n".join(findings).strip(), "\n".join(conclusion).strip(),
                  tuple(flags), tuple(codes), study_uid, observer, observed or _ts(_get(obr, 7)))


def _text_of(msg, obx) -> str:
    """OBX-5's text: repetitions are lines; HL7 escapes (\\.br\\ too) undone."""
    try:
        field5 = obx[5]
    except (IndexError, KeyError):
        return ""
    reps = list(field5) if any(isinstance(x, hl7.Repetition) for x in field5) else [field5]
    lines = []
    for r in reps:
        raw = str(r)
        raw = raw.replace("\\.br\\", "\n")
        lines.append(_unescape(msg, raw) if "\\" in raw else raw)
    return "\n".join(lines).strip()


def _name(msg, seg, f: int) -> str:
    """A person (XCN: ID ^ family ^ given ^ middle) as a DICOM PN."""
    parts = [_unescape(msg, _get(seg, f, c)) for c in (2, 3, 4)]
    return "^".join(parts).rstrip("^")
