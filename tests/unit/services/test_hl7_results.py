"""Results (issue 12): what an ORU^R01 says, whether it marks pathology, and
the report (a Basic Text SR) made from it -- read back by pydicom."""
from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pydicom
import pytest

from kontur.inventory import load
from kontur.render import hl7
from kontur.testing.hl7 import oru
from kontur_hl7 import orders, results, worklist

STUDY = {"PatientName": "Иванов^Пётр^Ильич", "PatientID": "12345", "PatientBirthDate": "19700101",
         "PatientSex": "M", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "StudyDate": "20261201",
         "StudyTime": "120000", "StudyID": "1", "AccessionNumber": "ACC1", "ReferringPhysicianName": ""}


def test_a_result_gives_its_protocol_conclusion_radiologist_and_flags():
    text = oru(cid="R1", findings="Очаг в S6 правого лёгкого~размером 12 мм\\.br\\с ровными краями \\T\\ без инвазии.",
               conclusion="Образование правого лёгкого.", flag="A")
    r = orders.parse(text).result
    assert r.accession == "ACC1" and r.status == "final"
    assert r.findings == "Очаг в S6 правого лёгкого\nразмером 12 мм\nс ровными краями & без инвазии."
    assert r.conclusion == "Образование правого лёгкого."
    assert r.observer == "Сидоров^Алексей^Петрович" and r.observed == "20261201125500"
    assert r.abnormal and results.pathology(r)
    normal = orders.parse(oru(cid="R2")).result
    assert not normal.abnormal and not results.pathology(normal)


def test_a_coded_finding_the_inventory_declares_marks_pathology_and_a_study_uid_is_read():
    text = oru(cid="R1", extra=["OBX|3|CE|121071^Finding^DCM||C34.1^Злокачественное новообразование^ICD10",
                                "OBX|4|HD|113014^Study^DCM||1.2.3.4.5"])
    r = orders.parse(text).result
    assert r.codes == ("C34.1",) and r.study_uid == "1.2.3.4.5"
    assert results.pathology(r, frozenset({"C34.1"})) and not results.pathology(r, frozenset({"C50"}))


def test_the_pathology_codes_of_a_mis_reach_its_hospital_in_the_services_site():
    region = load(Path(__file__).resolve().parents[3] / "inventory" / "example" / "region.yaml")
    site = worklist.Site.from_policy(hl7.site(region, "gkb3-lami"))
    codes = site.hospital("GKB3").pathology_codes
    assert "C34.1" in codes and "R91" in codes
    r = orders.parse(oru(cid="R1", extra=["OBX|3|CE|121071^Finding^DCM||R91^Очаг в лёгком^ICD10"])).result
    assert r.codes == ("R91",)
    normal = orders.parse(oru(cid="R2")).result
    assert results.pathology(r, codes) and not results.pathology(normal, codes)
    # another hospital's MIS declares none: the same code is no flag there
    assert not worklist.Site.from_policy(hl7.site(region, "onco-lami")).hospital("ONCO").pathology_codes



def test_a_corrected_result_is_read_as_corrected():
    assert orders.parse(oru(cid="R1", status="C")).result.status == "corrected"
    assert orders.parse(oru(cid="R1", status="P")).result.status == "preliminary"


@pytest.mark.parametrize("text,ack,code,words", [
    (oru(cid="B1").split("\rOBR|")[0] + "\r", "AR", 100, "without an OBR segment"),
    ("\r".join(oru(cid="B2").split("\r")[:3]) + "\r", "AR", 100, "no OBX segment"),
    (oru(cid="B3").replace("OBX|1|TX|", "OBX|1||").replace("OBX|2|TX|", "OBX|2||"), "AR", 101,
     "has no value type (OBX-2)"),
    (oru(cid="B4").replace("|TX|", "|NM|"), "AR", 101, "no OBX carries text"),
    (oru(cid="B5", status="X"), "AE", 103, "status (OBX-11) 'X' is not read here"),
    (oru(cid="B6").replace("|ACC1|||||F", "||||||F").replace("|P-ACC1|ACC1|", "|||"), "AR", 101,
     "names no accession number"),
])
def test_broken_results_are_refused_with_a_code_and_a_reason(text, ack, code, words):
    with pytest.raises(orders.Reject) as e:
        orders.parse(text)
    assert (e.value.ack, e.value.code) == (ack, code) and words in e.value.text, e.value.text


def _roundtrip(ds) -> pydicom.Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def test_the_report_is_a_basic_text_sr_of_the_stored_study_with_the_text_intact():
    r = orders.parse(oru(cid="R1", conclusion="Образование правого лёгкого.", flag="A")).result
    report = results.report_facts(r, None, worklist.Hospital("onco", ("ONCO",), (), title="Онкодиспансер"))
    now = dt.datetime(2026, 12, 1, 13, 0, 0)
    ds = _roundtrip(results.sr_dataset(report, STUDY, now=now))
    assert ds.SOPClassUID == results.BASIC_TEXT_SR and ds.Modality == "SR"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (ds.StudyInstanceUID, ds.PatientID, ds.AccessionNumber) == (STUDY["StudyInstanceUID"], "12345", "ACC1")
    assert str(ds.PatientName) == "Иванов^Пётр^Ильич"
    assert results.text_of(ds) == (r.findings, "Образование правого лёгкого.")
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "VERIFIED"
    assert str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == "Сидоров^Алексей^Петрович"
    # the same result makes the same report (stored again after a crash: not a second one)
    again = results.sr_dataset(report, STUDY, now=now + dt.timedelta(hours=1))
    assert again.SOPInstanceUID == ds.SOPInstanceUID and again.SeriesInstanceUID == ds.SeriesInstanceUID
    # a corrected result: another report in the same series, naming the one it replaces
    c = orders.parse(oru(cid="R2", status="C", conclusion="Образование правого лёгкого, T1N0.")).result
    fixed = _roundtrip(results.sr_dataset(results.report_facts(c, None, None), STUDY, now=now,
                                          predecessor={"sop_uid": ds.SOPInstanceUID,
                                                       "series_uid": ds.SeriesInstanceUID}))
    assert fixed.SOPInstanceUID != ds.SOPInstanceUID and fixed.SeriesInstanceUID == ds.SeriesInstanceUID
    ref = fixed.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    # a preliminary result: not complete, not verified
    p = results.report_facts(orders.parse(oru(cid="R3", status="P")).result, None, None)
    pre = results.sr_dataset(p, STUDY, now=now)
    assert (pre.CompletionFlag, pre.VerificationFlag) == ("PARTIAL", "UNVERIFIED")


def test_a_report_of_a_result_marking_pathology_carries_the_mark_a_research_feed_reads():
    """``pathology_only`` feeds select by the study itself at the TsAMI: the report of a result that marks
    pathology holds a CODE item Finding = Abnormal (SNOMED CT 263654008); the text stays as it was."""
    from kontur_plugins.research import feeds
    r = orders.parse(oru(cid="R1", conclusion="Образование правого лёгкого.", flag="A")).result
    report = results.report_facts(r, None, None)
    now = dt.datetime(2026, 12, 1, 13, 0, 0)
    marked = _roundtrip(results.sr_dataset(report, STUDY, now=now, pathology=True))
    plain = _roundtrip(results.sr_dataset(report, STUDY, now=now))
    assert results.text_of(marked) == results.text_of(plain)
    assert marked.SOPInstanceUID == plain.SOPInstanceUID          # one result, one report, whatever its mark
    assert feeds.facts_of([marked], {}).pathology and not feeds.facts_of([plain], {}).pathology
    # the two packages' definitions of the mark are one
    assert tuple(c[:2] for c in results.PATHOLOGY_MARK) == feeds.PATHOLOGY_MARK
