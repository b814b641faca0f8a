# SPDX-License-Identifier: AGPL-3.0-or-later
"""A narrow, fast reader of a Part 10 file's header, for the ingest stage's
common case (issue 10): little-endian files whose changes are a few top-level
elements.

Why not pydicom here: it is the parser of record (``ingest`` falls back to it
for everything this module declines), but building a Dataset of every
received instance costs about 1 ms in Orthanc's interpreter, on the path every
C-STORE takes.  This module only walks element headers -- tag, VR, length,
offset -- up to the pixel data, follows sequences to collect their text
values, and gives up (``None``) on anything it is not sure of: big endian,
deflated, no file meta, a length past the end, a malformed item.  VRs of
implicit-VR files come from pydicom's data dictionary.

Pure: bytes in, :class:`Header` out.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import product
from typing import NamedTuple

TEXT_VRS = {"SH", "LO", "ST", "LT", "UT", "UC", "PN"}
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")
_EXPLICIT = struct.Struct("<HH2sH")      # tag, VR, a short length (or the reserved bytes of a long one)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: every two-capital VR code, as bytes -> (its text, has a 4-byte length)
_VR_CODES = {(a + b).encode(): (a + b, a + b in LONG_VRS) for a, b in product(_LETTERS, repeat=2)}


class Element(NamedTuple):
    tag: int
    vr: str
    start: int          # where its header starts
    value: int          # where its value starts
    length: int


@dataclass
class Header:
    implicit: bool
    transfer_syntax: str
    dataset_start: int
    elements: dict[int, Element] = field(default_factory=dict)      # top level, before the pixel data
    order: list[int] = field(default_factory=list)                  # their tags, as in the file
    nested_text: list[bytes] = field(default_factory=list)          # text values inside sequences
    end: int = 0                                                    # where the pixel data (or the file) starts

    def value(self, data: bytes, tag: int) -> bytes | None:
        e = self.elements.get(tag)
        return None if e is None else data[e.value:e.value + e.length]


class _Stop(Exception):
    pass


def _dictionary_vr(tag: int) -> str:
    if (tag >> 16) % 2:                 # private: unknown
        return "UN"
    try:
        from pydicom.datadict import dictionary_VR  # noqa: PLC0415
        return str(dictionary_VR(tag)).split(" ")[0]
    except (KeyError, ImportError):
        return "UN"


def _meta(data: bytes) -> tuple[str, int]:
    if len(data) < 144 or data[128:132] != b"DICM":
        raise _Stop
    pos, ts = 132, None
    while pos + 8 <= len(data):
        group, elem = _TAG.unpack_from(data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4:pos + 6].decode("ascii", "replace")
        if vr in LONG_VRS:
            length = _U32.unpack_from(data, pos + 8)[0]
            value = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            value = pos + 8
        if length == UNDEFINED or value + length > len(data):
            raise _Stop
        if elem == 0x0010:
            ts = data[value:value + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = value + length
    if ts is None:
        raise _Stop
    return ts, pos


def _element_header(data: bytes, pos: int, implicit: bool) -> tuple[int, str, int, int]:
    """(tag, vr, value offset, length) of the element at ``pos``."""
    if pos + 8 > len(data):
        raise _Stop
    group, elem = _TAG.unpack_from(data, pos)
    tag = (group << 16) | elem
    if implicit or group == 0xFFFE:
        length = _U32.unpack_from(data, pos + 4)[0]
        vr = "" if group == 0xFFFE else _dictionary_vr(tag)
        return tag, vr, pos + 8, length
    vr = data[pos + 4:pos + 6].decode("ascii", "replace")
    if vr in LONG_VRS:
        if pos + 12 > len(data):
            raise _Stop
        return tag, vr, pos + 12, _U32.unpack_from(data, pos + 8)[0]
    if not vr.isalpha() or not vr.isupper():
        raise _Stop
    return tag, vr, pos + 8, struct.unpack_from("<H", data, pos + 6)[0]


def _sequence(data: bytes, pos: int, length: int, implicit: bool, texts: list[bytes]) -> int:
    """Walk a sequence's items from ``pos``; return where the sequence ends."""
    end = None if length == UNDEFINED else pos + length
    while end is None or pos < end:
        tag, _, value, item_len = _element_header(data, pos, True)   # item headers are always tag + length
        if tag == SEQ_END:
            return value
        if tag != ITEM:
            raise _Stop
        pos = _dataset(data, value, None if item_len == UNDEFINED else value + item_len, implicit, texts)
    if pos != end:
        raise _Stop
    return pos


def _dataset(data: bytes, pos: int, end: int | None, implicit: bool, texts: list[bytes]) -> int:
    """Walk an item's elements (to ``end``, or to its delimiter); return where it ends."""
    while end is None or pos < end:
        tag, vr, value, length = _element_header(data, pos, implicit)
        if tag == ITEM_END:
            if end is not None:
                raise _Stop
            return value
        if vr == "SQ" or (length == UNDEFINED and vr in ("UN", "")):
            pos = _sequence(data, value, length, implicit, texts)
            continue
        if length == UNDEFINED or value + length > len(data):
            raise _Stop
        if vr in TEXT_VRS and length:
            texts.append(data[value:value + length])
        pos = value + length
    if pos != end:
        raise _Stop
    return pos


def scan(data: bytes) -> Header | None:
    """The header of a little-endian Part 10 file, or None (use pydicom)."""
    try:
        ts, pos = _meta(data)
        if ts in (BIG_ENDIAN, DEFLATED):
            return None
        implicit = ts == IMPLICIT_LE
        h = Header(implicit, ts, pos)
        elements, order, n = h.elements, h.order, len(data)
        # the common case on every C-STORE, so the loop reads explicit-VR headers inline
        while pos < n:
            if implicit:
                tag, vr, value, length = _element_header(data, pos, implicit)
            else:
                if pos + 8 > n:
                    return None
                group, elem, code, length = _EXPLICIT.unpack_from(data, pos)
                tag = (group << 16) | elem
                if tag >= PIXEL_DATA or group == 0xFFFE:
                    break
                known = _VR_CODES.get(code)
                if known is None:
                    return None
                vr, long = known
                if long:
                    if pos + 12 > n:
                        return None
                    length = _U32.unpack_from(data, pos + 8)[0]
                    value = pos + 12
                else:
                    value = pos + 8
            if tag >= PIXEL_DATA or (tag >> 16) == 0xFFFE:
                break
            if tag & 0xFFFF == 0:               # group lengths: the splice would make them wrong
                return None
            if vr == "SQ" or (length == UNDEFINED and vr in ("UN", "")):
                elements[tag] = Element(tag, "SQ", pos, value, length)
                order.append(tag)
                pos = _sequence(data, value, length, implicit, h.nested_text)
                continue
            if length == UNDEFINED or value + length > n:
                return None
            elements[tag] = Element(tag, vr, pos, value, length)
            order.append(tag)
            pos = value + length
        h.end = pos
        if order != sorted(order):
            return None
        return h
    except (_Stop, struct.error, UnicodeDecodeError):
        return None
