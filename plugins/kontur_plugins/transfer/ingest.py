# SPDX-License-Identifier: AGPL-3.0-or-later
"""The received-instance stage (issue 10): repair text encodings, stamp the
hospital's Issuer of Patient ID, before Orthanc stores the instance.

Orthanc 1.10's Python plugin lets one callback see each received instance and
give back a changed one.  This module is that callback's logic, with pydicom
(Debian's ``python3-pydicom``: 2.3 on the nodes; 3.0 in the control machine's
virtualenv, so the tests exercise both):

* the file is parsed once, lazily: text values stay raw bytes, pixel data is
  never decoded, converted or rewritten (it is written back byte for byte);
* ``charset.decide`` says what the text is really in; re-encoded values are
  written as UTF-8 under Specific Character Set ``ISO_IR 192``;
* Issuer of Patient ID (0010,0021) is set to the hospital's issuer when the
  instance carries none;
* nothing changes -> the original bytes are kept (no rewrite, no cost);
* the original bytes of every changed value are returned for the node's audit
  trail (kept on the node, never logged).

Anything pydicom cannot read is not this stage's to judge: the instance goes
to Orthanc unchanged, which stores or refuses it as it always does.
"""
from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field

from . import charset, scan

#: value representations whose text follows Specific Character Set
TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}
SPECIFIC_CHARACTER_SET = 0x00080005
ISSUER_OF_PATIENT_ID = 0x00100021
PATIENT_ID = 0x00100020
OTHER_PATIENT_IDS_SEQUENCE = 0x00101002


def regional_key(issuer: str, patient_id: str) -> str | None:
    """The region's patient key: ``ISSUER:ID`` (None if it would not fit a DICOM LO)."""
    key = f"{issuer}:{patient_id}"
    return key if len(key) <= 64 else None
PIXEL_DATA = 0x7FE00010


@dataclass
class Outcome:
    data: bytes | None = None                  # the changed instance, or None: keep as received
    changes: list[str] = field(default_factory=list)
    original: dict[str, str] = field(default_factory=dict)   # "gggg,eeee" -> original bytes (latin-1 text)
    sop_uid: str | None = None
    study_uid: str | None = None
    error: str | None = None                   # why the instance was left as received


def _pydicom():
    import pydicom  # noqa: PLC0415 - Debian's python3-pydicom on the node
    return pydicom


def _vr(elem, pydicom) -> str | None:
    vr = getattr(elem, "VR", None)
    if vr:
        return str(vr)
    try:
        return pydicom.datadict.dictionary_VR(elem.tag)
    except KeyError:
        return None


def _text_elements(ds, pydicom, path: str = ""):
    """(dataset, tag, raw element, path) for every raw text value, sequences included."""
    for tag in list(ds.keys()):
        if tag == PIXEL_DATA or tag.group == 0x0002:
            continue
        elem = ds.get_item(tag)
        vr = _vr(elem, pydicom)
        where = f"{path}{tag.group:04X},{tag.elem:04X}"
        if vr == "SQ":
            for i, item in enumerate(ds[tag].value or []):
                yield from _text_elements(item, pydicom, f"{where}[{i}]/")
        elif vr in TEXT_VRS and getattr(elem, "is_raw", False) and elem.value:
            yield ds, tag, elem, where


def _declared(ds) -> list[str] | None:
    elem = ds.get_item(SPECIFIC_CHARACTER_SET)
    if elem is None or not elem.value:
        return None
    value = elem.value
    if isinstance(value, bytes):
        return [v.strip() for v in value.decode("ascii", "replace").split("\\")]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def write_dataset(ds, pydicom) -> bytes:
    """``ds`` as a file's bytes, as read (pydicom 2.3 on the nodes, 3.0 on the control machine)."""
    out = io.BytesIO()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(out, ds, enforce_file_format=False)
    else:
        pydicom.dcmwrite(out, ds, write_like_original=True)
    return out.getvalue()


def _uid(ds, tag: int) -> str | None:
    elem = ds.get_item(tag)
    if elem is None or not elem.value:
        return None
    raw = elem.value
    return (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip("\0 ") or None


def _element_bytes(tag: int, vr: str, value: bytes, implicit: bool) -> bytes | None:
    if len(value) % 2:
        value += b" "
    g, e = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHI", g, e, len(value)) + value
    if vr in scan.LONG_VRS:
        return struct.pack("<HH2s2xI", g, e, vr.encode(), len(value)) + value
    if len(value) > 0xFFFF:
        return None
    return struct.pack("<HH2sH", g, e, vr.encode(), len(value)) + value


def _splice(data: bytes, h: scan.Header, edits: list[tuple[int, str, bytes]]) -> bytes | None:
    """The file with top-level elements replaced or inserted in place; every
    other byte (pixel data included) as received."""
    cuts: list[tuple[int, int, int, bytes]] = []
    for tag, vr, value in edits:
        if vr == "SQ":                      # an item, ready: the sequence header around it
            g, e = tag >> 16, tag & 0xFFFF
            new = (struct.pack("<HHI", g, e, len(value)) if h.implicit
                   else struct.pack("<HH2s2xI", g, e, b"SQ", len(value))) + value
        else:
            new = _element_bytes(tag, vr, value, h.implicit)
        if new is None:
            return None
        e = h.elements.get(tag)
        if e is not None:
            if vr == "SQ":
                return None
            cuts.append((e.start, e.value + e.length, tag, new))
        else:
            later = [t for t in h.order if t > tag]
            at = h.elements[later[0]].start if later else h.end
            cuts.append((at, at, tag, new))
    # one copy of the file: the pieces between the cuts, in order (inserts at
    # one place go lowest tag first)
    view = memoryview(data)                 # slices of it are not copies
    parts, at = [], 0
    for begin, end, _tag, new in sorted(cuts):
        parts.append(view[at:begin])
        parts.append(new)
        at = end
    parts.append(view[at:])
    return b"".join(parts)


def _ascii(value: bytes | None) -> str | None:
    if not value:
        return None
    return value.decode("ascii", "replace").strip("\0 ") or None


def _other_ids_item(patient_id: bytes, issuer: bytes, implicit: bool) -> bytes:
    """The value of Other Patient IDs Sequence: one item with the hospital's
    own Patient ID, its issuer and Type of Patient ID TEXT (defined lengths)."""
    body = b"".join(_element_bytes(tag, vr, value, implicit) or b"" for tag, vr, value in (
        (PATIENT_ID, "LO", patient_id), (ISSUER_OF_PATIENT_ID, "LO", issuer), (0x00100022, "CS", b"TEXT")))
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def _fast(data: bytes, h: scan.Header, issuer: str | None, encoding: str | None,
          repair_text: bool, patient_key: str = "local") -> Outcome | None:
    """The stage on what :func:`scan.scan` read; None: leave it to pydicom."""
    out = Outcome(sop_uid=_ascii(h.value(data, 0x00080018)), study_uid=_ascii(h.value(data, 0x0020000D)))
    if not out.sop_uid:
        return None
    top = [(t, e.vr, data[e.value:e.value + e.length]) for t, e in h.elements.items()
           if e.vr in scan.TEXT_VRS and e.length]
    raw_label = h.value(data, SPECIFIC_CHARACTER_SET)
    declared = [v.strip() for v in raw_label.decode("ascii", "replace").strip("\0 ").split("\\")] if raw_label and raw_label.strip(b"\0 ") else None
    edits: list[tuple[int, str, bytes]] = []
    if repair_text:
        verdict = charset.decide([v for _, _, v in top] + h.nested_text, declared)
        if verdict.action == "reencode" and encoding and not declared:
            verdict = charset.Verdict("reencode", encoding, f"no Specific Character Set: the device sends {encoding}")
        if verdict.changes:
            if not all(v.isascii() for v in h.nested_text):
                return None                 # text inside sequences: pydicom rewrites the file
            for tag, vr, raw in top:
                if not raw.isascii():
                    edits.append((tag, vr, raw.decode(verdict.source, "replace").rstrip(" \0").encode("utf-8")))
                    if verdict.action == "reencode":
                        out.original[f"{tag >> 16:04X},{tag & 0xFFFF:04X}"] = raw.decode("latin_1")
            edits.append((SPECIFIC_CHARACTER_SET, "CS", charset.UTF8.encode()))
            done = "re-encoded" if verdict.action == "reencode" else "relabelled"
            out.changes.append(f"text {done} as UTF-8 ({verdict.reason})")
    else:
        verdict = charset.Verdict("keep")
    if issuer and not (h.value(data, ISSUER_OF_PATIENT_ID) or b"").strip(b" \0"):
        if not issuer.isascii() and not verdict.changes and (declared or [""])[0] != charset.UTF8:
            return None                     # pydicom encodes it under the dataset's own label
        edits.append((ISSUER_OF_PATIENT_ID, "LO", issuer.encode("utf-8")))
        out.changes.append(f"Issuer of Patient ID set to {issuer}")
    if patient_key == "regional" and issuer:
        own = (h.value(data, ISSUER_OF_PATIENT_ID) or b"").strip(b" \0").decode("utf-8", "replace") or issuer
        pid_raw = (h.value(data, PATIENT_ID) or b"").rstrip(b" \0")
        if pid_raw and not pid_raw.startswith(f"{own}:".encode()):
            if not pid_raw.isascii() or not own.isascii() or OTHER_PATIENT_IDS_SEQUENCE in h.elements:
                return None                 # pydicom: non-ASCII IDs, or an Other Patient IDs list to extend
            key = regional_key(own, pid_raw.decode("ascii"))
            if key is not None:
                edits.append((PATIENT_ID, "LO", key.encode("ascii")))
                edits.append((OTHER_PATIENT_IDS_SEQUENCE, "SQ",
                              _other_ids_item(pid_raw, own.encode("ascii"), h.implicit)))
                out.changes.append("Patient ID made regional (ISSUER:ID; the hospital's own in Other Patient IDs)")
    if edits:
        out.data = _splice(data, h, edits)
        if out.data is None:
            return None
    return out


def process(data: bytes, *, issuer: str | None = None, encoding: str | None = None,
            repair_text: bool = True, fast: bool = True, patient_key: str = "local") -> Outcome:
    """The stage on one received instance (``fast=False``: pydicom only, for
    the tests that hold the two paths to one result).  ``issuer``: the hospital's Issuer
    of Patient ID (stamped when absent); ``encoding``: a codec declared for
    undeclared text, which then replaces the guess (not set by the node: Orthanc
    1.10 calls the received-instance callback before it tells the plugin the
    calling AET, so a per-device declaration has nothing to key on); ``patient_key``:
    ``regional`` puts ``ISSUER:ID`` in Patient ID and the hospital's own ID
    in Other Patient IDs Sequence (the TsAMI keys patients by Patient ID alone).

    Fast path (``scan``): the header is walked up to the pixel data and the
    few changed elements are spliced into the received bytes.  Text inside
    sequences, big-endian, deflated or odd files take the slow path: pydicom
    reads and writes the whole file."""
    try:
        h = scan.scan(data) if fast else None
        if h is not None:
            fast = _fast(data, h, issuer, encoding, repair_text, patient_key)
            if fast is not None:
                return fast
        pydicom = _pydicom()
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
        out = Outcome(sop_uid=_uid(ds, 0x00080018), study_uid=_uid(ds, 0x0020000D))
        if not out.sop_uid:
            return Outcome(error="no SOP Instance UID pydicom can read: left to Orthanc as received")
        elements = list(_text_elements(ds, pydicom))
        declared = _declared(ds)
        verdict = (charset.decide([e.value for _, _, e, _ in elements], declared) if repair_text
                   else charset.Verdict("keep", reason="text repair is off"))
        if verdict.action == "reencode" and encoding and not declared:
            verdict = charset.Verdict("reencode", encoding, f"no Specific Character Set: the device sends {encoding}")
        edits: list[tuple[int, str, bytes]] = []
        if verdict.changes:
            for _item, tag, elem, where in elements:
                raw = elem.value
                if raw.isascii():
                    continue
                edits.append((int(tag), _vr(elem, pydicom) or "LO",
                              raw.decode(verdict.source, "replace").rstrip(" \0").encode("utf-8")))
                if verdict.action == "reencode":
                    out.original[where] = raw.decode("latin_1")
            edits.append((SPECIFIC_CHARACTER_SET, "CS", charset.UTF8.encode()))
            done = "re-encoded" if verdict.action == "reencode" else "relabelled"
            out.changes.append(f"text {done} as UTF-8 ({verdict.reason})")
        if issuer:
            current = ds.get_item(ISSUER_OF_PATIENT_ID)
            value = current.value if current is not None else None
            if not (value.strip(b" \0") if isinstance(value, bytes) else (value or "").strip()):
                edits.append((ISSUER_OF_PATIENT_ID, "LO", issuer.encode("utf-8")))
                out.changes.append(f"Issuer of Patient ID set to {issuer}")
        if patient_key == "regional" and issuer:
            own = _uid(ds, ISSUER_OF_PATIENT_ID) or issuer
            pid = str(ds.get("PatientID") or "").strip()
            key = regional_key(own, pid) if pid and not pid.startswith(f"{own}:") else None
            if key is not None:
                edits.append((PATIENT_ID, "LO", key.encode("utf-8")))
                edits.append((OTHER_PATIENT_IDS_SEQUENCE, "SQ", json.dumps([pid, own]).encode("utf-8")))
                out.changes.append("Patient ID made regional (ISSUER:ID; the hospital's own in Other Patient IDs)")
        if edits:
            out.data = _rewrite(data, edits, verdict, pydicom)
        return out
    except Exception as exc:  # noqa: BLE001 - anything unreadable goes to Orthanc as received
        return Outcome(error=f"{type(exc).__name__}: {exc}")


def _rewrite(data: bytes, edits, verdict: charset.Verdict, pydicom) -> bytes:
    """The slow path: the whole file read and written by pydicom."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if verdict.changes:
        # every value with high bytes becomes a decoded DataElement, written as
        # UTF-8 under the new label (pydicom 3 re-encodes raw values when the
        # label changes, pydicom 2.3 writes them as they are: decoded values are
        # right under both)
        for item, tag, elem, _where in list(_text_elements(ds, pydicom)):
            raw = elem.value
            if not raw.isascii():
                item[tag] = pydicom.DataElement(tag, _vr(elem, pydicom),
                                                raw.decode(verdict.source, "replace").rstrip(" \0"))
        ds.SpecificCharacterSet = charset.UTF8
    for tag, _vr_, value in edits:
        if tag == ISSUER_OF_PATIENT_ID:
            ds.IssuerOfPatientID = value.decode("utf-8")
        elif tag == PATIENT_ID:
            ds.PatientID = value.decode("utf-8")
        elif tag == OTHER_PATIENT_IDS_SEQUENCE:
            pid, own = json.loads(value)
            item = pydicom.Dataset()
            item.PatientID, item.IssuerOfPatientID, item.TypeOfPatientID = pid, own, "TEXT"
            seq = list(ds.get("OtherPatientIDsSequence") or [])
            ds.OtherPatientIDsSequence = seq + [item]
    return write_dataset(ds, pydicom)
