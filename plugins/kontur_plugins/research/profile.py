# SPDX-License-Identifier: AGPL-3.0-or-later
"""A feed's de-identification profile: DICOM PS3.15 Annex E, the Basic
Application Level Confidentiality Profile and the options a feed may choose.

The Basic profile's table (E.1-1, version 2021b) is applied by Orthanc's own
``/anonymize`` -- the maintained implementation of that table on the node --
at the top level of the dataset.  What Orthanc 1.10 does not do, kontur's
second pass (:mod:`.deid`) does: Orthanc leaves text and person names inside
kept sequences as they are, regenerates UIDs at random (a second run would
give new ones), keeps a private element without its creator, and cleans no SR
content.  So the request asks Orthanc to *keep* what the second pass maps or
shifts itself (every UID attribute, the dates under the modified-dates option)
and what an option retains.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..problems import ConfigProblems

#: option -> (code in CID 7050 "De-identification Method", its meaning)
OPTIONS: dict[str, tuple[str, str]] = {
    "retain_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
}
BASIC = ("113100", "Basic Application Confidentiality Profile")
BURNED_IN = ("hold", "cleaned")

#: attributes with action U in table E.1-1: kept by Orthanc, mapped by the second pass
#: (which maps every non-standard UID it finds, these or others)
UID_ATTRIBUTES = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "0008,1155",            # Referenced SOP Instance UID
    "3006,0024",            # Referenced Frame of Reference UID
    "3006,00C2",            # Related Frame of Reference UID
    "0020,0200",            # Synchronization Frame of Reference UID
    "0020,9161",            # Concatenation UID
    "0020,9164",            # Dimension Organization UID
    "0008,3010",            # Irradiation Event UID
    "0040,A124",            # UID
    "0070,031A",            # Fiducial UID
    "0040,4023",            # Referenced General Purpose Scheduled Procedure Step Transaction UID
    "0008,1195",            # Transaction UID
    "0040,DB0D",            # Template Extension Creator UID
    "0040,DB0C",            # Template Extension Organization UID
    "0088,0140",            # Storage Media File-set UID
    "0004,1511",            # Referenced SOP Instance UID in File
    "0018,1002",            # Device UID
    "0028,1214",            # Large Palette Color Lookup Table UID
    "0028,1199",            # Palette Color Lookup Table UID
    "0062,0021",            # Tracking UID
    "0008,0058",            # Failed SOP Instance UID List
)

#: dates and times the basic profile empties or removes; under retain_modified_dates they are
#: kept here and shifted by the patient's offset in the second pass (times kept as they are)
TEMPORAL_ATTRIBUTES = (
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime",
    "AcquisitionDateTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
)

#: K under Retain Patient Characteristics
PATIENT_CHARACTERISTICS = (
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "SmokingStatus",
    "PregnancyStatus", "PatientSexNeutered", "AdditionalPatientHistory", "0010,0200",  # Quality Control Subject
)
#: K under Retain Device Identity
DEVICE_IDENTITY = (
    "StationName", "DeviceSerialNumber", "0018,1002", "PlateID", "GantryID", "CassetteID",
    "DetectorID", "0018,700A",  # Detector ID
    "PerformedStationName", "PerformedLocation",
)
#: C under Clean Descriptors: kept by Orthanc, the patient's identity removed from them
DESCRIPTORS = (
    "StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription",
    "AcquisitionDeviceProcessingDescription", "DerivationDescription", "ContrastBolusAgent",
    "AdmittingDiagnosesDescription", "ReasonForTheRequestedProcedure",
)
#: C under Clean Structured Content: the SR tree kept, its text and names cleaned
STRUCTURED = ("ContentSequence",)


class ProfileError(ConfigProblems):
    """A research profile cannot be used; ``problems`` lists why."""


@dataclass(frozen=True)
class Profile:
    options: frozenset[str] = frozenset()
    #: private elements that may stay: ("gggg,xxee" with the block's creator), e.g. ("0019,100C", "GEMS_ACQU_01")
    safe_private: tuple[tuple[str, str], ...] = ()
    #: "hold": an instance whose pixels may carry burned-in identity is held back; "cleaned": the feed's
    #: devices are known to write none (the feed says so)
    burned_in: str = "hold"

    def has(self, option: str) -> bool:
        return option in self.options

    def method_codes(self) -> list[tuple[str, str]]:
        return [BASIC] + [OPTIONS[o] for o in sorted(self.options)]

    def method_text(self) -> str:
        """De-identification Method (0012,0063): LO, at most 64 characters."""
        codes = "+".join(code for code, _ in self.method_codes())
        return f"kontur PS3.15 E {codes}"[:64]

    def orthanc_request(self, replace: dict[str, str]) -> dict:
        """The body of ``POST /instances/{id}/anonymize``: the 2021b table, what the second pass
        handles kept, the pseudonyms replaced, private elements removed (the second pass puts back
        the safe ones with their creator)."""
        keep = list(UID_ATTRIBUTES)
        if self.has("retain_modified_dates"):
            keep += TEMPORAL_ATTRIBUTES
        if self.has("retain_patient_characteristics"):
            keep += PATIENT_CHARACTERISTICS
        if self.has("retain_device_identity"):
            keep += DEVICE_IDENTITY
        if self.has("clean_descriptors"):
            keep += DESCRIPTORS
        if self.has("clean_structured_content"):
            keep += STRUCTURED
        return {"DicomVersion": "2021b", "Keep": sorted(set(keep)), "Replace": dict(replace),
                "KeepPrivateTags": False, "Force": True}


def _private_tag(text: str) -> str | None:
    t = text.strip().upper().replace("(", "").replace(")", "")
    if len(t) == 9 and t[4] == "," and all(c in "0123456789ABCDEF" for c in t[:4] + t[5:]):
        if int(t[:4], 16) % 2 == 1:
            return t
    return None


def parse_profile(doc: dict | None, where: str = "profile") -> Profile:
    """The profile of a feed from the policy file (or the inventory); every problem named."""
    doc = doc or {}
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise ProfileError([f"{where} is {type(doc).__name__}; expected a mapping"])
    unknown = sorted(set(doc) - {"options", "safe_private", "burned_in"})
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; expected options, safe_private, burned_in")
    options = doc.get("options") or []
    if not isinstance(options, list):
        problems.append(f"{where}.options is {type(options).__name__}; expected a list of {', '.join(OPTIONS)}")
        options = []
    for o in options:
        if o not in OPTIONS:
            problems.append(f"{where}.options: {o!r} is not a PS3.15 option kontur knows; expected one of "
                            f"{', '.join(OPTIONS)}")
    safe: list[tuple[str, str]] = []
    for i, entry in enumerate(doc.get("safe_private") or []):
        tag = _private_tag(str(entry.get("tag", ""))) if isinstance(entry, dict) else None
        creator = entry.get("creator") if isinstance(entry, dict) else None
        if tag is None or not isinstance(creator, str) or not creator.strip():
            problems.append(f"{where}.safe_private[{i}] is {entry!r}; expected {{tag: 'gggg,xxee' (an odd group), "
                            f"creator: the private creator's name}}")
        else:
            safe.append((tag, creator.strip()))
    burned = doc.get("burned_in", "hold")
    if burned not in BURNED_IN:
        problems.append(f"{where}.burned_in is {burned!r}; expected hold (instances that may carry burned-in "
                        f"identity are held back) or cleaned (the feed's devices write none)")
    if problems:
        raise ProfileError(problems)
    return Profile(frozenset(o for o in options if o in OPTIONS), tuple(safe), burned)
