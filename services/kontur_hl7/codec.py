# SPDX-License-Identifier: AGPL-3.0-or-later
"""The text of an HL7 v2 message from its bytes, by MSH-18 (Character Set).

Neither python-hl7 nor hl7apy reads MSH-18: both decode with one codec fixed
in advance.  HL7 v2.5 table 0211 names the character sets; Russian MIS
send ``UNICODE UTF-8``, ``8859/5`` (ISO 8859-5 Cyrillic), the non-standard
``CP1251`` / ``WINDOWS-1251`` -- or nothing, with CP1251 bytes.  Pure.
"""
from __future__ import annotations

from dataclasses import dataclass

#: MSH-18 values (upper case, spaces and dashes as sent) -> Python codec
CHARSETS = {
    "": None, "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "UNICODE": "utf-8",
    "8859/1": "latin-1", "8859/5": "iso8859_5",
    "CP1251": "cp1251", "WINDOWS-1251": "cp1251", "WIN1251": "cp1251", "CP-1251": "cp1251",
    "KOI8-R": "koi8_r",
}


class CodecError(ValueError):
    """The bytes cannot be read as an HL7 message's text."""


@dataclass(frozen=True)
class Decoded:
    text: str
    codec: str              # the Python codec used
    declared: str           # MSH-18 as sent ('' when empty)
    note: str = ""          # how the codec was chosen, when MSH-18 did not say


def msh_fields(raw: bytes) -> list[bytes] | None:
    """The MSH segment's fields: index n is MSH-n (index 1, MSH-1, is the field separator); or None."""
    start = raw.find(b"MSH")
    if start < 0 or len(raw) < start + 8:
        return None
    sep = raw[start + 3:start + 4]
    if sep.isalnum() or sep in (b"\r", b"\n", b""):
        return None
    end = len(raw)
    for stop in (b"\r", b"\n"):
        i = raw.find(stop, start)
        if 0 <= i < end:
            end = i
    parts = raw[start:end].split(sep)
    return [parts[0], sep] + parts[1:]


def decode(raw: bytes) -> Decoded:
    """The message's text; raises :class:`CodecError` naming what MSH-18 said."""
    nul = raw.find(b"\x00")
    if nul >= 0:        # no HL7 character set has it; no database text column takes it
        raise CodecError(f"the message has a NUL byte (0x00) at offset {nul}: not HL7 text")
    fields = msh_fields(raw)
    declared = ""
    if fields is not None and len(fields) > 18:
        declared = fields[18].split(fields[2][:1] or b"^")[0].decode("ascii", "replace").strip()
    key = declared.upper()
    if key not in CHARSETS:
        raise CodecError(f"MSH-18 (Character Set) {declared!r} is not one this service reads; expected one of "
                         + ", ".join(repr(k) for k in CHARSETS if k))
    codec = CHARSETS[key]
    if codec is None:
        # nothing declared: UTF-8 if the bytes are UTF-8, else the region's legacy code page
        try:
            return Decoded(raw.decode("utf-8"), "utf-8", "", "MSH-18 empty: the bytes are UTF-8")
        except UnicodeDecodeError:
            return Decoded(raw.decode("cp1251", "replace"), "cp1251", "",
                           "MSH-18 empty and the bytes are not UTF-8: read as CP1251")
    try:
        return Decoded(raw.decode(codec), codec, declared)
    except UnicodeDecodeError as exc:
        raise CodecError(f"the message is not valid {declared} (MSH-18): byte 0x{raw[exc.start]:02X} "
                         f"at offset {exc.start}") from None
