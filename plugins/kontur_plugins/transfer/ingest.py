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
import struct
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


def _write(ds, pydicom) -> bytes:
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


#: explicit-VR element headers with a 4-byte length (PS3.5 §7.1.2)
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
DEFLATED = "1.2.840.10008.1.2.1.99"


def _splice(data: bytes, ds, edits: list[tuple[int, str, bytes]]) -> bytes | None:
    """The file with top-level elements replaced or inserted in place, every
    other byte (pixel data included) as received; None where that is not safe
    (big endian, deflated, group lengths, an element it cannot place) and the
    caller writes the file with pydicom instead.

    ``ds`` is the dataset read with ``stop_before_pixels``: the offsets of its
    raw elements locate each element in ``data``."""
    tags = sorted(ds.keys())
    if not tags or any(t.element == 0 for t in tags):
        return None
    ts = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "") if hasattr(ds, "file_meta") else ""
    if ts == DEFLATED:
        return None
    raws = [e for e in (ds.get_item(t) for t in tags) if getattr(e, "is_raw", False)]
    if not raws or not raws[0].is_little_endian:
        return None
    implicit = bool(raws[0].is_implicit_VR)
    # where the dataset starts: after the file meta group (pydicom decodes the
    # first element, Specific Character Set, as it reads, so it has no offset)
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        return None
    dataset_start = 144 + int.from_bytes(data[140:144], "little")

    def start_of(elem) -> int:
        vr = str(elem.VR or "")
        return elem.value_tell - (8 if implicit or vr not in LONG_VRS else 12)

    def element(tag: int, vr: str, value: bytes) -> bytes | None:
        if len(value) % 2:
            value += b" "
        g, e = tag >> 16, tag & 0xFFFF
        if implicit:
            return struct.pack("<HHI", g, e, len(value)) + value
        if vr in LONG_VRS:
            return struct.pack("<HH2s2xI", g, e, vr.encode(), len(value)) + value
        if len(value) > 0xFFFF:
            return None
        return struct.pack("<HH2sH", g, e, vr.encode(), len(value)) + value

    cuts: list[tuple[int, int, bytes]] = []
    for tag, vr, value in edits:
        new = element(tag, vr, value)
        if new is None:
            return None
        elem = ds.get_item(tag)
        if elem is not None:
            if not getattr(elem, "is_raw", False):
                # only the dataset's first element may be decoded already: it spans
                # from the dataset's start to the next element
                if tag != tags[0] or len(tags) < 2 or not getattr(ds.get_item(tags[1]), "is_raw", False):
                    return None
                cuts.append((dataset_start, start_of(ds.get_item(tags[1])), new))
                continue
            if elem.length == 0xFFFFFFFF:
                return None
            cuts.append((start_of(elem), elem.value_tell + elem.length, new))
        else:
            later = [t for t in tags if t > tag]
            if not later:
                return None
            nxt = ds.get_item(later[0])
            if not getattr(nxt, "is_raw", False):
                if later[0] != tags[0]:
                    return None
                at = dataset_start
            else:
                at = start_of(nxt)
            cuts.append((at, at, new))
    out = data
    for begin, end, new in sorted(cuts, key=lambda c: (c[0], c[1]), reverse=True):
        if not (0 < begin <= end <= len(out)):
            return None
        out = out[:begin] + new + out[end:]
    return out


def process(data: bytes, *, issuer: str | None = None, encoding: str | None = None,
            repair_text: bool = True) -> Outcome:
    """The stage on one received instance.  ``issuer``: the hospital's Issuer
    of Patient ID (stamped when absent); ``encoding``: the codec the sending
    device is declared to use for undeclared text (the inventory's
    ``text_encoding``), which then replaces the guess.

    Fast path: the header is read up to the pixel data and the few changed
    elements are spliced into the received bytes.  Only text inside sequences
    (or a file the splice cannot edit safely) makes pydicom write the whole file."""
    try:
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
        nested = False
        if verdict.changes:
            for _item, tag, elem, where in elements:
                raw = elem.value
                if not any(b >= 0x80 for b in raw):
                    continue
                if "/" in where:
                    nested = True
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
                if not issuer.isascii() and not verdict.changes and (declared or [""])[0] != charset.UTF8:
                    nested = True           # needs pydicom to encode it under the dataset's own label
        if not edits:
            return out
        spliced = None if nested else _splice(data, ds, edits)
        out.data = spliced if spliced is not None else _rewrite(data, edits, verdict, pydicom)
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
            if any(b >= 0x80 for b in raw):
                item[tag] = pydicom.DataElement(tag, _vr(elem, pydicom),
                                                raw.decode(verdict.source, "replace").rstrip(" \0"))
        ds.SpecificCharacterSet = charset.UTF8
    for tag, _vr_, value in edits:
        if tag == ISSUER_OF_PATIENT_ID:
            ds.IssuerOfPatientID = value.decode("utf-8")
    return _write(ds, pydicom)
