"""Issue 10 in Debian's Orthanc (its Python plugin 4.0, Debian's pydicom 2.3):
the ingest stage repairs text before Orthanc stores it, and what reaches the
TsAMI reads right in the TsAMI's own REST answers.

Studies come from a modality by C-STORE (DCMTK storescu) into a LAMI running
kontur's plugin with the transfer section as the renderer writes it; the
TsAMI is a plain Orthanc (it stores what it gets as it is).
"""
from __future__ import annotations

import io
import json
import sqlite3

import pydicom
import pytest

from kontur.testing.dicom import Study, make_instance, storescu, with_raw_text
from kontur.testing.replication import SCU_AET, wait_delivered

pytestmark = pytest.mark.orthanc

ISSUER = "42-TEST"
TRANSFER = {"enabled": True, "repair_text": True, "issuer": ISSUER}
NAME, INSTITUTION = 0x00100010, 0x00080080


def legacy_study(tmp_path, tag: str, name: bytes, label: str | None, institution: bytes | None = None) -> tuple[Study, bytes]:
    inst = make_instance(patient_id=f"CS-{tag}", patient_name="x", study_uid=f"1.2.826.0.1.3680043.8.498.77.{abs(hash(tag)) % 10**8}",
                         series_uid=f"1.2.826.0.1.3680043.8.498.78.{abs(hash(tag)) % 10**8}", study_description="CT")
    values = {NAME: name}
    if institution is not None:
        values[INSTITUTION] = institution
    data = with_raw_text(inst.data, values, charset=label)
    inst.data = data
    study = Study(inst.study_uid, inst.patient_id, "", [inst])
    path = tmp_path / f"{tag}.dcm"
    path.write_bytes(data)
    return study, data


def send(node, tmp_path, *tags):
    storescu([tmp_path / f"{t}.dcm" for t in tags], port=node.dicom_port, called_aet=node.aet, calling_aet=SCU_AET)


def tsami_tags(tsami, study: Study) -> dict:
    (instance,) = tsami.get(f"/studies/{study.orthanc_id()}/instances")
    return tsami.get(f"/instances/{instance['ID']}/simplified-tags")


def dataset_bytes(part10: bytes) -> bytes:
    """What follows the file meta group of a Part 10 file."""
    assert part10[128:132] == b"DICM"
    group_length = int.from_bytes(part10[140:144], "little")     # (0002,0000) UL, explicit VR
    return part10[144 + group_length:]


def audit(node) -> list[dict]:
    with sqlite3.connect(node.policy["state_dir"] + "/replication.sqlite3") as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM audit WHERE actor = 'ingest' ORDER BY id")]


CASES = [
    # tag, what the device writes, its label, what everyone must read
    ("cp1251", "Иванов^Пётр^Сергеевич", "cp1251", None),
    ("koi8", "Кузнецова^Мария^Олеговна", "koi8_r", None),
    ("latin-label", "Смирнов^Олег", "cp1251", "ISO_IR 100"),
]


def test_cp1251_and_koi8_names_read_right_in_utf8_at_the_tsami(tmp_path, tsami, make_node):
    lami = make_node(transfer=TRANSFER)
    studies = {}
    for tag, name, codec, label in CASES:
        studies[tag] = legacy_study(tmp_path, tag, name.encode(codec), label,
                                    institution="Областная больница".encode(codec))
    send(lami, tmp_path, *studies)
    for tag, name, codec, label in CASES:
        study, sent = studies[tag]
        wait_delivered(tsami, study)
        tags = tsami_tags(tsami, study)
        assert tags["PatientName"] == name, tag
        assert tags["InstitutionName"] == "Областная больница"
        assert tags["SpecificCharacterSet"] == "ISO_IR 192"
        assert tags["IssuerOfPatientID"] == ISSUER
        # the TsAMI finds the patient by name
        found = tsami.post("/tools/find", {"Level": "Patient", "Query": {"PatientName": name.split("^")[0] + "*"}})
        assert len(found) == 1, tag
        # pixel data byte for byte
        (instance,) = tsami.get(f"/studies/{study.orthanc_id()}/instances")
        stored = pydicom.dcmread(io.BytesIO(tsami.get(f"/instances/{instance['ID']}/file", raw=True)))
        assert stored.PixelData == pydicom.dcmread(io.BytesIO(sent)).PixelData
    # the original bytes are kept in the LAMI's audit trail (once per study and content), not in its log
    trail = audit(lami)
    assert len(trail) == len(CASES)
    originals = {t["subject"]: t for t in trail}
    for tag, name, codec, label in CASES:
        entry = originals[studies[tag][0].study_uid]
        assert json.loads(entry["detail"])["first_instance"] == studies[tag][0].instances[0].sop_uid
        original = json.loads(entry["detail"])["original"]["0010,0010"]
        assert original.encode("latin_1").rstrip(b" ") == name.encode(codec)
    assert "Иванов" not in lami.log_text() and "\\xc8\\xe2" not in lami.log_text()


@pytest.mark.parametrize("tag,name,codec,label", [
    ("latin1", "Müller^Jürgen", "latin_1", "ISO_IR 100"),
    ("utf8", "Воробьёв^Илья", "utf_8", "ISO_IR 192"),
    ("ascii", "Smith^John", "ascii", None),
])
def test_correct_names_are_stored_unchanged(tmp_path, tsami, make_node, tag, name, codec, label):
    lami = make_node(transfer={**TRANSFER, "issuer": None})
    study, sent = legacy_study(tmp_path, tag, name.encode(codec), label)
    send(lami, tmp_path, tag)
    wait_delivered(tsami, study)
    assert tsami_tags(tsami, study)["PatientName"] == name
    (instance,) = lami.get(f"/studies/{study.orthanc_id()}/instances")
    # the dataset byte for byte (the file meta is the receiver's: C-STORE carries none)
    assert dataset_bytes(lami.get(f"/instances/{instance['ID']}/file", raw=True)) == dataset_bytes(sent)
    assert audit(lami) == []


def test_without_the_stage_the_names_are_lost(tmp_path, tsami, make_node):
    """What a region gets today (the defect the stage removes): Orthanc stores
    an undeclared CP1251 name as '' and a KOI8-R one as '^'-like garbage."""
    lami = make_node()
    study, _ = legacy_study(tmp_path, "plain", "Иванов^Пётр".encode("cp1251"), None)
    send(lami, tmp_path, "plain")
    wait_delivered(tsami, study)
    assert tsami_tags(tsami, study)["PatientName"] != "Иванов^Пётр"
