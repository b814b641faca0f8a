"""Small DICOM test data made with pydicom, and ways to send it.

``make_study()`` builds a study of tiny CT instances (Cyrillic patient name,
``SpecificCharacterSet`` ISO_IR 192, fresh UIDs); ``pad_bytes`` makes them as
large as a test needs (pixel data of that size).  ``storescu()`` sends files
with DCMTK, the realistic path from a modality (C-STORE), with
``TCP_NODELAY=1``.
"""
from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

CT_IMAGE = CTImageStorage
PREFIX = "1.2.826.0.1.3680043.10.1499."  # pydicom's generate_uid default root is fine too


@dataclass
class Instance:
    sop_uid: str
    series_uid: str
    study_uid: str
    patient_id: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Study:
    study_uid: str
    patient_id: str
    patient_name: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def sop_uids(self) -> set[str]:
        return {i.sop_uid for i in self.instances}

    @property
    def nbytes(self) -> int:
        return sum(i.size for i in self.instances)

    def write(self, directory: str | Path) -> list[Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in self.instances:
            p = d / f"{i.sop_uid}.dcm"
            p.write_bytes(i.data)
            paths.append(p)
        return paths

    def orthanc_id(self) -> str:
        return orthanc_study_id(self.patient_id, self.study_uid)


def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's deterministic study ID: SHA-1 of "PatientID|StudyInstanceUID"
    in five dash-separated groups of eight hex digits."""
    import hashlib
    h = hashlib.sha1(f"{patient_id}|{study_uid}".encode()).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def make_instance(*, patient_id: str, patient_name: str, study_uid: str, series_uid: str,
                  sop_uid: str | None = None, instance_number: int = 1, series_number: int = 1,
                  modality: str = "CT", pixel_bytes: int = 512, accession: str = "",
                  study_description: str = "КТ органов грудной клетки",
                  study_date: str | None = None) -> Instance:
    """One CT instance; ``pixel_bytes`` (rounded up to an even number of 16-bit
    pixels in a square-ish image) sets its size."""
    sop_uid = sop_uid or generate_uid()
    npix = max(1, (pixel_bytes + 1) // 2)
    cols = max(1, int(npix ** 0.5))
    rows = max(1, -(-npix // cols))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    today = study_date or dt.date.today().strftime("%Y%m%d")
    ds.StudyDate = today
    ds.SeriesDate = today
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyDescription = study_description
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = (bytes(range(256)) * (rows * cols * 2 // 256 + 1))[: rows * cols * 2]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Instance(sop_uid, series_uid, study_uid, patient_id, buf.getvalue())


def make_study(n_instances: int = 3, *, patient_id: str | None = None,
               patient_name: str = "Иванов^Иван", n_series: int = 1,
               pixel_bytes: int = 512, study_uid: str | None = None,
               modality: str = "CT", accession: str = "") -> Study:
    patient_id = patient_id or f"P{generate_uid()[-10:]}"
    study_uid = study_uid or generate_uid()
    study = Study(study_uid, patient_id, patient_name)
    series = [generate_uid() for _ in range(max(1, n_series))]
    for k in range(n_instances):
        s = k % len(series)
        study.instances.append(make_instance(
            patient_id=patient_id, patient_name=patient_name, study_uid=study_uid,
            series_uid=series[s], series_number=s + 1, instance_number=k + 1,
            pixel_bytes=pixel_bytes, modality=modality, accession=accession))
    return study


def add_series(study: Study, n_instances: int = 1, *, pixel_bytes: int = 512) -> list[Instance]:
    """Late instances: a new series of an existing study (not yet sent anywhere)."""
    series_uid = generate_uid()
    n_series = len({i.series_uid for i in study.instances}) + 1
    new = [make_instance(patient_id=study.patient_id, patient_name=study.patient_name,
                         study_uid=study.study_uid, series_uid=series_uid, series_number=n_series,
                         instance_number=k + 1, pixel_bytes=pixel_bytes)
           for k in range(n_instances)]
    study.instances += new
    return new


def storescu(paths: list[str | Path], *, port: int, called_aet: str, calling_aet: str = "TESTSCU",
             host: str = "127.0.0.1", timeout: float = 120) -> subprocess.CompletedProcess:
    """Send files with DCMTK ``storescu`` (C-STORE); raises on failure."""
    if host.split(".")[0] != "127":
        raise ValueError("tests send to loopback only")
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    cmd = ["storescu", "-aet", calling_aet, "-aec", called_aet, host, str(port)]
    cmd += [str(p) for p in paths]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"storescu failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    return res


def findscu_worklist(directory: str | Path, *, port: int, called_aet: str, calling_aet: str,
                     keys: list[str] | None = None, host: str = "127.0.0.1", netns: str | None = None,
                     timeout: float = 60) -> tuple[subprocess.CompletedProcess, list]:
    """A Modality Worklist C-FIND with DCMTK ``findscu -W``, as a device sends
    it (``netns``: from the lab device's network namespace); returns the run
    and the answers (pydicom datasets of the response files)."""
    import pydicom  # noqa: PLC0415
    if netns is None and host.split(".")[0] != "127":
        raise ValueError("tests query loopback only, or a lab host from a lab namespace")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("rsp*.dcm"):
        old.unlink()
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = (["ip", "netns", "exec", netns] if netns else []) + [
        "findscu", "-W", "-aet", calling_aet, "-aec", called_aet, "-X", "-od", str(d)]
    for k in keys if keys is not None else [
            "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyInstanceUID",
            "RequestedProcedureDescription", "ScheduledProcedureStepSequence[0].Modality",
            "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate"]:
        cmd += ["-k", k]
    cmd += [host, str(port)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    answers = [pydicom.dcmread(p) for p in sorted(d.glob("rsp*.dcm"))]
    return res, answers


def send_study(study: Study, directory: str | Path, *, port: int, called_aet: str,
               calling_aet: str = "TESTSCU", instances: list[Instance] | None = None) -> None:
    """C-STORE ``instances`` (default: all of ``study``) from files written under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in instances if instances is not None else study.instances:
        p = d / f"{i.sop_uid}.dcm"
        p.write_bytes(i.data)
        paths.append(p)
    storescu(paths, port=port, called_aet=called_aet, calling_aet=calling_aet)


def with_raw_text(data: bytes, values: dict[int, bytes], *, charset: str | None = None) -> bytes:
    """An instance's bytes with text values replaced by raw ``values`` (tag ->
    bytes, written as they are: CP1251, KOI8-R, Latin-1 as old devices write
    them) and Specific Character Set set to ``charset`` (None removes it)."""
    from pydicom import dcmread
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_VR

    ds = dcmread(io.BytesIO(data))
    if charset is None:
        if 0x00080005 in ds:
            del ds[0x00080005]
    else:
        ds.SpecificCharacterSet = charset
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    # read back under the new label, so that writing leaves raw values raw
    ds = dcmread(io.BytesIO(buf.getvalue()))
    for tag, raw in values.items():
        raw = raw + b" " if len(raw) % 2 else raw
        ds._dict[BaseTag(tag)] = RawDataElement(BaseTag(tag), dictionary_VR(tag), len(raw), raw, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- the transfer package (reglament 004 §5.6) --------------------------------------------

#: a regional classifier's code the package studies carry
PACKAGE_CODES = {"A06.09.005": "Компьютерная томография органов грудной полости"}
_n = [0]


def package_study(*, sex="M", code="A06.09.005", report=False, mutate=None) -> Study:
    """One CT instance carrying the §5.6 package (physician, procedure; the regional code of
    :data:`PACKAGE_CODES`), and a Basic Text SR report if asked."""
    _n[0] += 1
    k = _n[0]
    uid = f"1.2.826.0.1.3680043.8.498.90.{k}"
    inst = make_instance(patient_id=f"VAL-{k}", patient_name="Иванов^Пётр", study_uid=uid, series_uid=uid + ".1")
    ds = pydicom.dcmread(io.BytesIO(inst.data))
    ds.PatientSex = sex
    ds.PerformingPhysicianName = "Петрова^Анна"
    person = Dataset()
    code_item = Dataset()
    code_item.CodeValue, code_item.CodingSchemeDesignator, code_item.CodeMeaning = "4201-777", "RU-42", "Петрова А."
    person.PersonIdentificationCodeSequence = [code_item]
    ds.PerformingPhysicianIdentificationSequence = [person]
    proc = Dataset()
    proc.CodeValue, proc.CodingSchemeDesignator = code, "RU-804N"
    proc.CodeMeaning = PACKAGE_CODES.get(code, "Неизвестная услуга")
    ds.ProcedureCodeSequence = [proc]
    if mutate is not None:
        mutate(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    inst.data = buf.getvalue()
    study = Study(uid, inst.patient_id, "Иванов^Пётр", [inst])
    if report:
        sr = Dataset()
        sr.file_meta = pydicom.dataset.FileMetaDataset()
        sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
        sr.file_meta.MediaStorageSOPInstanceUID = uid + ".2.1"
        sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        sr.SpecificCharacterSet = "ISO_IR 192"
        sr.SOPClassUID, sr.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", uid + ".2.1"
        sr.StudyInstanceUID, sr.SeriesInstanceUID = uid, uid + ".2"
        sr.PatientID, sr.PatientName, sr.PatientSex, sr.PatientBirthDate = inst.patient_id, "Иванов^Пётр", sex, "19700101"
        sr.Modality, sr.SeriesNumber, sr.InstanceNumber = "SR", 2, 1
        sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
        buf = io.BytesIO()
        sr.save_as(buf, enforce_file_format=True)
        study.instances.append(Instance(uid + ".2.1", uid + ".2", uid, inst.patient_id, buf.getvalue()))
    return study
