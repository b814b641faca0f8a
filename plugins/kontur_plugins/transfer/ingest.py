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
from dataclasses import dataclass, field

from . import charset

#: value representations whose text follows Specific Character Set
TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}
SPECIFIC_CHARACTER_SET = 0x00080005
ISSUER_OF_PATIENT_ID = 0x00100021
PIXEL_DATA = 0x7FE00010


@dataclass
class Outcome:
    data: bytes | None = None                  # the changed instance, or None: keep as received
    changes: list[str] = field(default_factory=list)
    original: dict[str, str] = field(default_factory=dict)   # "gggg,eeee" -> original bytes (latin-1 text)
    sop_uid: str | None = None
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


def _write(ds, pydicom) -> bytes:
    out = io.BytesIO()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(out, ds, enforce_file_format=False)
    else:
        pydicom.dcmwrite(out, ds, write_like_original=True)
    return out.getvalue()


def process(data: bytes, *, issuer: str | None = None, encoding: str | None = None,
            repair_text: bool = True) -> Outcome:
    """The stage on one received instance.  ``issuer``: the hospital's Issuer
    of Patient ID (stamped when absent); ``encoding``: the codec the sending
    device is declared to use for undeclared text (the inventory's
    ``text_encoding``), which then replaces the guess."""
    try:
        pydicom = _pydicom()
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        out = Outcome()
        uid = ds.get_item(0x00080018)
        if uid is not None and uid.value:
            raw = uid.value
            out.sop_uid = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)).strip("\0 ")
        if not out.sop_uid:
            return Outcome(error="no SOP Instance UID pydicom can read: left to Orthanc as received")
        elements = list(_text_elements(ds, pydicom))
        declared = _declared(ds)
        verdict = (charset.decide([e.value for _, _, e, _ in elements], declared) if repair_text
                   else charset.Verdict("keep", reason="text repair is off"))
        if verdict.action == "reencode" and encoding and not declared:
            verdict = charset.Verdict("reencode", encoding, f"no Specific Character Set: the device sends {encoding}")
        changed = False
        if verdict.changes:
            # every value with high bytes becomes a decoded DataElement, written
            # as UTF-8 under the new label (pydicom 3 re-encodes raw values when
            # the label changes, pydicom 2.3 writes them as they are: decoded
            # values are right under both)
            for item, tag, elem, where in elements:
                raw = elem.value
                if not any(b >= 0x80 for b in raw):
                    continue
                text = raw.decode(verdict.source, "replace").rstrip(" \0")
                item[tag] = pydicom.DataElement(tag, _vr(elem, pydicom), text)
                if verdict.action == "reencode":
                    out.original[where] = raw.decode("latin_1")
            ds.SpecificCharacterSet = charset.UTF8
            done = "re-encoded" if verdict.action == "reencode" else "relabelled"
            out.changes.append(f"text {done} as UTF-8 ({verdict.reason})")
            changed = True
        if issuer:
            current = ds.get_item(ISSUER_OF_PATIENT_ID)
            if current is None or not (current.value or b"").strip(b" \0" if isinstance(current.value, bytes) else " "):
                ds.IssuerOfPatientID = issuer
                out.changes.append(f"Issuer of Patient ID set to {issuer}")
                changed = True
        if changed:
            out.data = _write(ds, pydicom)
        return out
    except Exception as exc:  # noqa: BLE001 - anything unreadable goes to Orthanc as received
        return Outcome(error=f"{type(exc).__name__}: {exc}")
