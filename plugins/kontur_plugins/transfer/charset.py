# SPDX-License-Identifier: AGPL-3.0-or-later
"""Which character set a dataset's text is really in (issue 10, R3).

Pure: it looks at the raw bytes of a dataset's text values (PN, LO, SH, ST,
LT, UT, UC) and the Specific Character Set (0008,0005) it declares, and says
whether to leave them, to relabel them as UTF-8 (the bytes are UTF-8 already)
or to re-encode them from the encoding they are really in.  ``ingest`` does
the DICOM side with pydicom.

Older Russian devices write CP1251 or KOI8-R with no Specific Character Set,
or under a Latin-1 label; Orthanc (``DefaultEncoding: Utf8``) then stores
``''`` or ``^``.  How the guess is made, in this order:

1. only ASCII bytes -> nothing to do, whatever the label;
2. a label this module trusts and the bytes decode under it -> nothing to do
   (ISO_IR 144 Cyrillic, ISO_IR 192 UTF-8, and ISO_IR 100 Latin-1 unless the
   text is shaped like Cyrillic, see 4); ISO 2022 code extensions and labels
   it does not know are left as they are;
3. the bytes are valid UTF-8 -> relabel as ``ISO_IR 192`` (random CP1251 or
   KOI8-R text of two or more letters is practically never valid UTF-8);
4. the *shape* of the words: in Cyrillic text written in an 8-bit code, the
   words that hold a byte >= 0x80 are made of such bytes almost entirely
   ("\\xc8\\xe2\\xe0\\xed\\xee\\xe2"); in Latin-1 text they are ASCII words
   with an accented letter or two ("M\\xfcller", "Fran\\xe7ois").  Mostly
   high bytes -> Cyrillic, else Latin-1;
5. CP1251 or KOI8-R: both map 0xC0-0xFF to Cyrillic letters, in different
   orders and with upper and lower case swapped; the one whose reading has
   the likelier Russian letters (unigram frequencies) and the likelier case
   pattern (``Иванов``, ``ИВАНОВ``, ``иванов`` -- never ``иВАНОВ``) wins.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

UTF8 = "ISO_IR 192"

#: DICOM defined terms -> Python codec, for the single-byte labels this module trusts
TRUSTED = {"ISO_IR 100": "latin_1", "ISO_IR 144": "iso8859_5", "ISO_IR 192": "utf_8"}
#: labels meaning "the default repertoire" (ASCII): anything else in them is undeclared
DEFAULT_LABELS = {"", "ISO_IR 6", "ISO 2022 IR 6"}

# Russian letter frequencies (per cent, lower case; a standard corpus count)
_FREQ = {
    "о": 10.97, "е": 8.45, "а": 8.01, "и": 7.35, "н": 6.70, "т": 6.26, "с": 5.47, "р": 4.73,
    "в": 4.54, "л": 4.40, "к": 3.49, "м": 3.21, "д": 2.98, "п": 2.81, "у": 2.62, "я": 2.01,
    "ы": 1.90, "ь": 1.74, "г": 1.70, "з": 1.65, "б": 1.59, "ч": 1.44, "й": 1.21, "х": 0.97,
    "ж": 0.94, "ш": 0.73, "ю": 0.64, "ц": 0.48, "щ": 0.36, "э": 0.32, "ф": 0.26, "ъ": 0.04,
    "ё": 0.04,
}
_LOG_FREQ = {ch: math.log(f / 100.0) for ch, f in _FREQ.items()}
_UNLIKELY = math.log(0.0001)     # a character no Russian text has (box drawing, symbols)
_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (in the decoded reading)
_WORD_BYTES = re.compile(rb"[A-Za-z\x80-\xff]+")


@dataclass(frozen=True)
class Verdict:
    action: str                 # keep | relabel | reencode
    source: str | None = None   # the codec the bytes are in (reencode, relabel)
    reason: str = ""

    @property
    def changes(self) -> bool:
        return self.action != "keep"


def _labels(declared: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if declared is None:
        return []
    if isinstance(declared, str):
        return [v.strip() for v in declared.split("\\")]
    return [str(v).strip() for v in declared]


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
        return True
    except UnicodeDecodeError:
        return False


def cyrillic_shaped(values: list[bytes]) -> bool:
    """Are the words that hold high bytes made mostly of them (an 8-bit Cyrillic code)?"""
    high = total = 0
    for value in values:
        for word in _WORD_BYTES.findall(value):
            n_high = sum(1 for b in word if b >= 0x80)
            if n_high:
                high += n_high
                total += len(word)
    return total > 0 and high / total >= 0.6


def russian_score(text: str) -> float:
    """Mean log-likelihood per letter of ``text`` read as Russian, with a
    penalty for case patterns no name has (a lower-case letter followed by
    capitals inside one word)."""
    score = 0.0
    letters = 0
    for word in _WORD.findall(text):
        for ch in word:
            letters += 1
            score += _LOG_FREQ.get(ch.lower(), _UNLIKELY if not ch.isascii() else 0.0)
        if word[0].lower() in "ьъы":
            score += _UNLIKELY                      # no Russian word starts so
        cyr = [ch for ch in word if not ch.isascii()]
        if len(cyr) >= 2:
            rest = cyr[1:]
            if cyr[0].islower() and any(c.isupper() for c in rest):
                score += 4 * _UNLIKELY / 10 * len(rest)   # "иВАНОВ": the case is swapped
    # characters between words that are neither ASCII nor common punctuation
    for ch in text:
        if not ch.isascii() and not ch.isalpha() and ch not in "№«»–—":
            score += _UNLIKELY
            letters += 1
    return score / max(letters, 1)


def guess_cyrillic(values: list[bytes]) -> str:
    """'cp1251' or 'koi8_r': the likelier reading of 8-bit Cyrillic bytes."""
    joined = b" ".join(values)
    best, best_score = "cp1251", -math.inf
    for codec in ("cp1251", "koi8_r"):
        try:
            text = joined.decode(codec)
        except UnicodeDecodeError:
            continue
        s = russian_score(text)
        if s > best_score:
            best, best_score = codec, s
    return best


def _undeclared(values: list[bytes], why: str) -> Verdict:
    joined = b"".join(values)
    if _decodes(joined, "utf_8"):
        return Verdict("relabel", "utf_8", f"{why}: the bytes are UTF-8")
    if cyrillic_shaped(values):
        codec = guess_cyrillic(values)
        return Verdict("reencode", codec, f"{why}: the text is {codec.upper().replace('_', '-')}")
    return Verdict("reencode", "latin_1", f"{why}: the text is Latin-1")


def decide(values: list[bytes], declared: str | list[str] | None) -> Verdict:
    """What to do with the text ``values`` of one dataset whose Specific
    Character Set is ``declared`` (a string, a multi-value list or None)."""
    values = [v for v in values if v]
    if all(v.isascii() for v in values):
        return Verdict("keep", reason="ASCII only")
    labels = _labels(declared)
    label = labels[0] if labels else ""
    if len(labels) > 1 or (label.startswith("ISO 2022") and label not in DEFAULT_LABELS):
        shown = "\\".join(labels)
        return Verdict("keep", reason=f"code extensions ({shown}) are left as they are")
    if label in DEFAULT_LABELS:
        return _undeclared(values, "no Specific Character Set" if not label else f"labelled {label}")
    codec = TRUSTED.get(label)
    if codec is None:
        return Verdict("keep", reason=f"{label} is not a label kontur repairs")
    joined = b"".join(values)
    if codec == "latin_1":
        if _decodes(joined, "utf_8"):
            return Verdict("relabel", "utf_8", f"labelled {label}: the bytes are UTF-8")
        if cyrillic_shaped(values):
            codec = guess_cyrillic(values)
            return Verdict("reencode", codec, f"labelled {label}: the text is {codec.upper().replace('_', '-')}")
        return Verdict("keep", reason=f"{label} and the text agree")
    if _decodes(joined, codec):
        return Verdict("keep", reason=f"{label} and the text agree")
    return _undeclared(values, f"labelled {label}, not valid in it")
