"""The §5.6 package rules: for each, a study that fails it and one that passes."""
from __future__ import annotations

import copy

import pytest

from kontur_plugins.transfer.rules import Series, Settings, StudyFacts, blocks, evaluate

CODES = {"A06.09.005": "Компьютерная томография органов грудной полости"}
SETTINGS = Settings(classifier_version="2026-01", codes=CODES)

GOOD = {
    "PatientID": "12345", "PatientName": "Иванов^Пётр", "PatientBirthDate": "19700101", "PatientSex": "M",
    "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "Modality": "CT", "SeriesNumber": "1",
    "PerformingPhysicianName": "Петрова^Анна",
    "PerformingPhysicianIdentificationSequence": [
        {"PersonIdentificationCodeSequence": [{"CodeValue": "4201-777", "CodingSchemeDesignator": "RU-42"}]}],
    "ProcedureCodeSequence": [{"CodeValue": "A06.09.005", "CodingSchemeDesignator": "RU-804N",
                               "CodeMeaning": "Компьютерная томография органов грудной полости"}],
}
REPORT = {"Modality": "SR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.11", "PatientID": "12345"}


def facts(*, image=None, report=True, syntax="1.2.840.10008.1.2.1") -> StudyFacts:
    series = [Series(image if image is not None else GOOD, syntax)]
    if report:
        series.append(Series(REPORT, "1.2.840.10008.1.2.1"))
    return StudyFacts(series)


def without(key, value=None):
    tags = copy.deepcopy(GOOD)
    if value is None:
        tags.pop(key, None)
    else:
        tags[key] = value
    return tags


def test_a_complete_study_is_valid():
    assert evaluate(facts(), SETTINGS).state == "valid"


def test_only_the_report_missing_is_incomplete_and_never_blocks():
    v = evaluate(facts(report=False), SETTINGS)
    assert v.state == "incomplete" and v.reasons == () and "protocol" in v.notes[0]
    assert not blocks(v, SETTINGS)


@pytest.mark.parametrize("image,syntax,word", [
    (without("LossyImageCompression", "01"), "1.2.840.10008.1.2.1", "Lossy Image Compression"),
    (GOOD, "1.2.840.10008.1.2.4.50", "JPEG Baseline"),
    (without("PatientID", ""), None, "Patient ID"),
    (without("StudyInstanceUID", "1.2.03.x"), None, "Study Instance UID"),
    (without("PatientName", "^"), None, "Patient's Name"),
    (without("PatientBirthDate", "01.01.1970"), None, "Birth Date"),
    (without("PatientSex", ""), None, "Sex"),
    (without("PerformingPhysicianIdentificationSequence"), None, "physician's regional code"),
    (without("PerformingPhysicianName"), None, "physician's name"),
    (without("ProcedureCodeSequence"), None, "procedure code is missing"),
    (without("ProcedureCodeSequence", [{"CodeValue": "B99.99", "CodeMeaning": "x"}]), None, "not in the regional classifier"),
    (without("ProcedureCodeSequence", [{"CodeValue": "A06.09.005"}]), None, "no name"),
    (without("ProcedureCodeSequence", [{"CodeValue": "A06.09.005", "CodeMeaning": "КТ ОГК"}]), None,
     "the regional classifier (version 2026-01) names it"),
])
def test_each_rule_quarantines_with_its_reason(image, syntax, word):
    v = evaluate(facts(image=image, syntax=syntax or "1.2.840.10008.1.2.1"), SETTINGS)
    assert v.state == "quarantined"
    assert any(word in r for r in v.reasons), v.reasons
    assert blocks(v, SETTINGS)
    assert not blocks(v, Settings(mode="warn", codes=CODES))


def test_every_reason_is_given_not_just_the_first():
    tags = without("PatientSex", "")
    tags.pop("PerformingPhysicianName")
    v = evaluate(facts(image=tags), SETTINGS)
    assert len(v.reasons) == 2


def test_a_rule_switched_off_is_not_checked():
    s = Settings(rules=frozenset({"patient_id"}), codes=CODES)
    assert evaluate(facts(image=without("PatientSex", ""), report=False), s).state == "valid"


def test_the_requested_procedure_code_counts_where_the_device_put_it_there():
    tags = without("ProcedureCodeSequence")
    tags["RequestAttributesSequence"] = [{"RequestedProcedureCodeSequence": GOOD["ProcedureCodeSequence"]}]
    assert evaluate(facts(image=tags), SETTINGS).state == "valid"


def test_configured_paths_replace_the_defaults():
    tags = without("PerformingPhysicianIdentificationSequence")
    tags["OperatorIdentificationSequence"] = [{"PersonIdentificationCodeSequence": [{"CodeValue": "9"}]}]
    paths = {**Settings().paths, "physician_code": ["OperatorIdentificationSequence/PersonIdentificationCodeSequence"]}
    assert evaluate(facts(image=tags), Settings(paths=paths, codes=CODES)).state == "valid"


@pytest.mark.parametrize("meaning", ["компьютерная томография органов грудной полости.",
                                     "  Компьютерная  томография органов грудной полости",
                                     "КОМПЬЮТЕРНАЯ ТОМОГРАФИЯ ОРГАНОВ ГРУДНОЙ ПОЛОСТИ"])
def test_the_classifier_name_matches_but_for_case_spacing_and_a_full_stop(meaning):
    tags = without("ProcedureCodeSequence", [{"CodeValue": "A06.09.005", "CodeMeaning": meaning}])
    assert evaluate(facts(image=tags), SETTINGS).state == "valid"


def test_yo_and_ye_are_one_letter_in_a_name():
    s = Settings(classifier_version="1", codes={"A05.10.006": "Регистрация ЭКГ с нагрузкой, расшифровка и её описание"})
    tags = without("ProcedureCodeSequence", [{"CodeValue": "A05.10.006",
                                              "CodeMeaning": "Регистрация ЭКГ с нагрузкой, расшифровка и ее описание"}])
    assert evaluate(facts(image=tags), s).state == "valid"
