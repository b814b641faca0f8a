# SPDX-License-Identifier: AGPL-3.0-or-later
"""What identifies the patient of an instance, and the leak scan of its
de-identified copy against it (issue 16: every element, sequences, private
tags, SR text and encapsulated documents included).

Names are compared *folded*: case-folded, Cyrillic transliterated (the
passport table, ICAO 9303 as Russian passports use it) and the spellings
that differ between transliteration tables merged (kh/h, ts/c, zh/z, iu/yu/u,
ia/ya/a, y/j/i, w/v, ...), so "Иванов", "IVANOV", "Iwanow" and "Ivanoff"
are one name to the scan.  Folding merges more than it must: the scan errs
towards holding an instance back.  Dates, IDs and phone numbers are compared
by their digits and letters only.  The scan reports where and what kind
(``(0040,A730)[2]/(0040,A160): patient name``), never the value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_ICAO = dict(zip("абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
                 ["a", "b", "v", "g", "d", "e", "e", "zh", "z", "i", "i", "k", "l", "m", "n", "o", "p", "r",
                  "s", "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "ie", "y", "", "e", "iu", "ia"]))
_CONSONANTS = (("shch", "sh"), ("sch", "sh"), ("kh", "h"), ("tz", "c"), ("ts", "c"), ("zh", "z"), ("ch", "c"),
               ("ck", "k"), ("w", "v"), ("x", "ks"), ("q", "k"), ("y", "i"), ("j", "i"))
_VOWELS = (("iu", "u"), ("ia", "a"), ("ie", "e"), ("io", "o"))
_RUNS = re.compile(r"i{2,}")
_FF = re.compile(r"ff\b")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def fold(text: str) -> str:
    """A text as the scan compares it: words of [0-9a-z] separated by single spaces."""
    t = "".join(_ICAO.get(c, c) for c in text.casefold())
    for a, b in _CONSONANTS:
        t = t.replace(a, b)
    t = _RUNS.sub("i", _FF.sub("v", t))
    for a, b in _VOWELS:
        t = t.replace(a, b)
    return " ".join(_NON_WORD.split(t)).strip()


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


@dataclass
class Identity:
    """The identifying values of one original instance, folded for the scan."""
    names: set[str] = field(default_factory=set)       # folded words of person names, >= 3 letters
    ids: set[str] = field(default_factory=set)         # folded patient IDs, accession numbers, other IDs
    dates: set[str] = field(default_factory=set)       # birth date as YYYYMMDD and DDMMYYYY
    phones: set[str] = field(default_factory=set)      # the last 7 digits of each phone number
    places: set[str] = field(default_factory=set)      # folded institution names, addresses
    uids: set[str] = field(default_factory=set)        # the original's own UIDs (none may survive)

    def words(self) -> list[tuple[str, str]]:
        return ([(w, "patient or staff name") for w in self.names] + [(w, "identifier") for w in self.ids]
                + [(w, "institution or address") for w in self.places])


#: person names: the patient's and everyone else's a record carries
NAME_TAGS = (0x00100010, 0x00101001, 0x00101060, 0x00101005, 0x00080090, 0x00081050, 0x00081060,
             0x00081070, 0x00321032, 0x00101002, 0x00400006, 0x00081048, 0x40081114, 0x00321034,
             0x0040A075, 0x0040A123, 0x00102297, 0x00102155, 0x0040A084)
ID_TAGS = (0x00100020, 0x00101000, 0x00080050, 0x00101002, 0x00200010, 0x00401001, 0x00400009,
           0x00380010, 0x00101040)
PLACE_TAGS = (0x00080080, 0x00080081, 0x00101040, 0x00081040, 0x00380300)
PHONE_TAGS = (0x00102154, 0x00080094, 0x00102155)
BIRTH_TAGS = (0x00100030,)


def _values(elem) -> list[str]:
    v = elem.value
    if v is None:
        return []
    if isinstance(v, bytes):
        return [v.decode("utf-8", "replace")]
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return [str(x) for x in v if x is not None]
    return [str(v)]


def _walk(ds, path: str = ""):
    """(path, element) for every element, in sequences too."""
    for elem in ds:
        where = f"{path}({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value or []):
                yield from _walk(item, f"{where}[{i}]/")
        else:
            yield where, elem


def _name_words(value: str) -> set[str]:
    return {w for w in fold(value.replace("^", " ").replace("=", " ")).split() if len(w) >= 3}


def identity_of(ds, standard_uids: set[str] | frozenset = frozenset(), into: Identity | None = None) -> Identity:
    """Everything identifying in ``ds`` (sequences included), folded; added to ``into`` when given
    (a study's identity is all its instances': an SR names what only the images' headers carry)."""
    idn = into if into is not None else Identity()
    for _, elem in _walk(ds):
        tag = int(elem.tag)
        vals = _values(elem)
        if tag in NAME_TAGS or elem.VR == "PN":
            for v in vals:
                idn.names |= _name_words(v)
        if tag in ID_TAGS:
            for v in vals:
                f = fold(v).replace(" ", "")
                if len(f) >= 3:
                    idn.ids.add(f)
                # "ISSUER:ID": the hospital's own part too
                if ":" in v:
                    tail = fold(v.rsplit(":", 1)[1]).replace(" ", "")
                    if len(tail) >= 3:
                        idn.ids.add(tail)
        if tag in PLACE_TAGS:
            for v in vals:
                f = fold(v)
                if len(f) >= 4:
                    idn.places.add(f)
        if tag in PHONE_TAGS:
            for v in vals:
                d = digits(v)
                if len(d) >= 7:
                    idn.phones.add(d[-7:])
        if tag in BIRTH_TAGS:
            for v in vals:
                d = digits(v)
                if len(d) == 8:
                    idn.dates |= {d, d[6:8] + d[4:6] + d[0:4]}
        if elem.VR == "UI":
            idn.uids |= {v for v in vals if v and v not in standard_uids}
    return idn


#: elements whose value the scan does not read as text
_NOT_TEXT = {"SQ", "OW", "OF", "OD", "OL", "OV", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV", "AT"}
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class Leak:
    path: str
    kind: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}"


def _contains_word(haystack: str, word: str) -> bool:
    if len(word) >= 5:
        return word in haystack
    return f" {word} " in f" {haystack} "


def leaks(ds, idn: Identity) -> list[Leak]:
    """Every element of the de-identified ``ds`` that still carries a piece of ``idn``."""
    found: list[Leak] = []
    for path, elem in _walk(ds):
        if int(elem.tag) == PIXEL_DATA or elem.VR in _NOT_TEXT:
            continue
        text = " ".join(_values(elem))
        if elem.VR == "UI":
            if any(v in idn.uids for v in _values(elem)):
                found.append(Leak(path, "original UID"))
            continue
        folded = fold(text)
        flat = folded.replace(" ", "")
        for word, kind in idn.words():
            hit = _contains_word(folded, word) if " " not in word else word in folded
            if not hit and kind == "identifier" and len(word) >= 5:
                hit = word in flat
            if hit:
                found.append(Leak(path, kind))
                break
        else:
            d = digits(text)
            if any(x in d for x in idn.dates):
                found.append(Leak(path, "birth date"))
            elif any(x in d for x in idn.phones):
                found.append(Leak(path, "phone number"))
    return found


#: a run of digits with the separators people write in phone numbers and dates
_NUMBER_RUN = re.compile(r"\+?\d[\d\s().\-/]{4,}\d")


def clean_text(text: str, idn: Identity) -> str:
    """``text`` without what carries ``idn`` (a descriptor or an SR text under the clean options):
    phone numbers and dates written with separators, then every word that names or identifies."""
    def number(m: re.Match) -> str:
        d = digits(m.group(0))
        return "" if any(x in d for x in idn.dates) or any(x in d for x in idn.phones) else m.group(0)
    text = _NUMBER_RUN.sub(number, text)
    for place in idn.places:                       # an institution's or an address's whole name
        words = place.split()
        if len(words) > 1:
            pattern = r"\W+".join(re.escape(w) for w in words)
            if re.search(pattern, fold(text)):
                text = " ".join(w for w in text.split() if fold(w) not in words)
    out = []
    for word in re.split(r"(\s+)", text):
        f = fold(word)
        f_flat = f.replace(" ", "")
        d = digits(word)
        bad = (any(_contains_word(f, n) for n in idn.names)
               or any(i in f_flat for i in idn.ids if len(i) >= 3)
               or any(p == f for p in idn.places)
               or (len(d) >= 6 and (any(x in d for x in idn.dates) or any(x in d for x in idn.phones))))
        out.append("" if bad else word)
    return re.sub(r"\s{2,}", " ", "".join(out)).strip(" ,;")
