# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur's second pass over what Orthanc's ``/anonymize`` returned (see
:mod:`.profile` for why there are two), and what is held back before either.

The second pass, on the whole dataset, sequences included:

* every UID that is not a standard one (a SOP class, a transfer syntax, a
  coding scheme) becomes its keyed counterpart (:meth:`Keys.uid`), so
  references inside the study still point at the right instance and a second
  run gives the same UIDs;
* dates (DA, and the date of DT) move by the patient's offset under
  ``retain_modified_dates``, else they are emptied;
* inside sequences: person names are removed, free text is removed unless it
  is a code's (value, scheme, meaning); under ``clean_structured_content``
  the SR tree stays and its text values are cleaned of the identity;
* private elements are removed everywhere, then the feed's safe ones are put
  back from the original, with their creator, at the top level;
* descriptors kept under ``clean_descriptors`` are cleaned of the identity;
* Patient Identity Removed, De-identification Method and its code sequence,
  Longitudinal Temporal Information Modified are written.

Before any of it: an instance whose pixels may carry burned-in identity, an
encapsulated document, or an SR without ``clean_structured_content`` is held
back with its reason.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .identity import Identity, clean_text
from .profile import DESCRIPTORS, Profile
from .pseudonyms import Keys

#: UIDs of classes, not of things: never mapped
CLASS_UID_TAGS = {0x00020002, 0x00020010, 0x00020012, 0x00080016, 0x00081150, 0x0008001A, 0x00080062,
                  0x0008010C, 0x00081090, 0x0040A170, 0x00041510, 0x00041512, 0x00080014, 0x00180022,
                  0x00189900, 0x0040E001, 0x04000010, 0x00082112}
BURNED_IN_MODALITIES = {"US", "SC", "OT", "XC", "ES"}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
ENCAPSULATED_DOCUMENT = 0x00420011
#: text kept inside sequences: what codes are made of (and SR's structure, which is CS)
CODE_TEXT = {0x00080100, 0x00080102, 0x00080103, 0x00080104, 0x00080105, 0x00080119, 0x00080120,
             0x0008010F, 0x00080106, 0x00080107, 0x0040A040, 0x0040A010, 0x0040A043, 0x004008EA}
TEXT_VALUE, PERSON_NAME = 0x0040A160, 0x0040A123
TEXT_VRS = {"LO", "SH", "ST", "LT", "UT", "UC", "UR", "AE"}


def _pydicom():
    import pydicom  # noqa: PLC0415 - Debian's python3-pydicom on the node
    return pydicom


def standard_uids() -> frozenset[str]:
    from pydicom._uid_dict import UID_dictionary  # noqa: PLC0415 - in pydicom 2.3 and 3.0 alike
    return frozenset(UID_dictionary)


def _tag_keyword_vals(ds, keyword: str) -> str:
    v = ds.get(keyword)
    return "" if v is None else str(v).strip()


def held_back(original, profile: Profile) -> str | None:
    """Why ``original`` does not go to the research node at all, or None."""
    modality = _tag_keyword_vals(original, "Modality").upper()
    sop_class = _tag_keyword_vals(original, "SOPClassUID")
    burned = _tag_keyword_vals(original, "BurnedInAnnotation").upper()
    has_pixels = 0x7FE00010 in original
    if ENCAPSULATED_DOCUMENT in original:
        return ("an encapsulated document: kontur does not clean a document's content, so it is not exported "
                "(PS3.15 E.3.2: cleaned or dropped)")
    if (modality == "SR" or "ContentSequence" in original) and not profile.has("clean_structured_content"):
        return "structured content (SR) and the feed does not choose clean_structured_content: not exported"
    if profile.burned_in != "cleaned" and has_pixels:
        if burned == "YES":
            return "Burned In Annotation is YES: the pixels carry identity (PS3.15 Clean Pixel Data is not done here)"
        risky = modality in BURNED_IN_MODALITIES or sop_class.startswith(SECONDARY_CAPTURE)
        if risky and burned != "NO":
            kind = f"modality {modality}" if modality in BURNED_IN_MODALITIES else "a secondary capture"
            return (f"{kind} without Burned In Annotation NO: its pixels may carry burned-in identity "
                    f"(declare the feed's burned_in: cleaned once its devices are known to write none)")
    return None


@dataclass
class Context:
    keys: Keys
    profile: Profile
    identity: Identity
    shift_days: int
    pseudonym: str
    standard: frozenset[str]


def _shift_date(value: str, days: int) -> str:
    def one(d: str) -> str:
        d = d.strip()
        if not d:
            return ""
        try:
            day = dt.date(int(d[0:4]), int(d[4:6] or 1), int(d[6:8] or 1)) if len(d) >= 4 else None
        except ValueError:
            return ""
        return (day + dt.timedelta(days=days)).strftime("%Y%m%d") if day else ""
    return "-".join(one(p) for p in value.split("-")) if value.strip("- ") else ""


def _shift_datetime(value: str, days: int) -> str:
    value = value.strip()
    date = _shift_date(value[:8], days)
    return (date + value[8:]) if date else ""


def _map_uids(value, ctx: Context):
    def one(v):
        v = str(v).strip()
        return v if not v or v in ctx.standard else ctx.keys.uid(v)
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [one(v) for v in value]
    return one(value)


def _private_delete(ds) -> None:
    for elem in list(ds):
        if elem.tag.is_private:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            for item in elem.value or []:
                _private_delete(item)


def _walk_clean(ds, ctx: Context, depth: int) -> None:
    shift = ctx.profile.has("retain_modified_dates")
    for elem in list(ds):
        tag, vr = int(elem.tag), elem.VR
        if vr == "SQ":
            for item in elem.value or []:
                _walk_clean(item, ctx, depth + 1)
            continue
        if vr == "UI":
            if tag not in CLASS_UID_TAGS and elem.value:
                elem.value = _map_uids(elem.value, ctx)
            continue
        if vr == "DA":
            if elem.value:
                elem.value = _shift_date(str(elem.value), ctx.shift_days) if shift else ""
            continue
        if vr == "DT":
            if elem.value:
                elem.value = _shift_datetime(str(elem.value), ctx.shift_days) if shift else ""
            continue
        if depth == 0:
            if vr == "PN" and tag != 0x00100010:
                elem.value = ""
            continue
        # inside a sequence
        if vr == "PN" and tag == PERSON_NAME:
            elem.value = "ANONYMIZED"          # an SR PNAME item keeps its (Type 1) value, as a dummy
        elif vr == "PN":
            del ds[elem.tag]
        elif tag == TEXT_VALUE and ctx.profile.has("clean_structured_content"):
            elem.value = clean_text(str(elem.value or ""), ctx.identity)
        elif vr in TEXT_VRS and tag not in CODE_TEXT:
            del ds[elem.tag]
        elif vr == "AS" and not ctx.profile.has("retain_patient_characteristics"):
            del ds[elem.tag]
        elif vr in ("OB", "UN"):
            del ds[elem.tag]


def _put_back_safe_private(ds, original, profile: Profile) -> list[str]:
    kept = []
    for tag_text, creator in profile.safe_private:
        group, element = int(tag_text[:4], 16), int(tag_text[5:], 16)
        block = element >> 8
        creator_tag = (group << 16) | block
        src = original.get(creator_tag)
        value_tag = (group << 16) | element
        if src is None or str(src.value).strip() != creator or value_tag not in original:
            continue
        ds[creator_tag] = src
        ds[value_tag] = original[value_tag]
        kept.append(tag_text)
    return kept


def second_pass(ds, original, ctx: Context) -> None:
    """Finish ``ds`` (Orthanc's de-identified copy of ``original``) in place."""
    pydicom = _pydicom()
    _private_delete(ds)
    _walk_clean(ds, ctx, 0)
    if ctx.profile.has("clean_descriptors"):
        for keyword in DESCRIPTORS:
            if keyword in ds and ds.data_element(keyword).VR in TEXT_VRS and ds.get(keyword):
                setattr(ds, keyword, clean_text(str(ds.get(keyword)), ctx.identity))
    _put_back_safe_private(ds, original, ctx.profile)
    ds.PatientID = ctx.pseudonym
    ds.PatientName = ctx.pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ctx.profile.method_text()
    items = []
    for code, meaning in ctx.profile.method_codes():
        item = pydicom.Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = pydicom.Sequence(items)
    ds.LongitudinalTemporalInformationModified = (
        "MODIFIED" if ctx.profile.has("retain_modified_dates") else "REMOVED")
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
