"""The viewer page's pure parts (issue 12): the link's values, which stored
study it may show, and a page that escapes everything it writes."""
from __future__ import annotations

import pytest

from kontur_plugins import viewer

STUDY = {"ID": "abc", "MainDicomTags": {"AccessionNumber": "ACC1", "StudyDate": "20261201",
                                        "StudyDescription": "КТ <грудной> клетки"},
         "PatientMainDicomTags": {"PatientID": "42-CITY:12345", "OtherPatientIDs": "12345\\777",
                                  "PatientName": "Иванов^Пётр", "PatientBirthDate": "19700101"}}


def test_the_links_values_are_decoded_and_checked():
    assert viewer.parse("12%2F3", "-", "1.2.3") == ("12/3", "", "1.2.3")
    for bad in (("", "A", "1.2.3"), ("1", "A", "1.2.x"), ("1", "A", "1.02.3"), ("x" * 65, "A", "1.2.3"),
                ("a%0Ab", "A", "1.2.3"), ("1", "A", "1." + "2" * 70)):
        with pytest.raises(viewer.NotShown) as e:
            viewer.parse(*bad)
        assert e.value.status == 400


def test_only_the_patients_own_study_of_that_order_is_shown():
    assert viewer.matches(STUDY, "12345", "ACC1")            # the hospital's own ID (regional key)
    assert viewer.matches(STUDY, "42-CITY:12345", "")        # the regional key itself; no accession given
    assert viewer.matches(STUDY, "777", "ACC1")              # one of its Other Patient IDs
    assert not viewer.matches(STUDY, "99999", "ACC1")
    assert not viewer.matches(STUDY, "12345", "ACC2")


def test_the_page_escapes_what_it_writes_and_counts_its_images():
    series = [{"MainDicomTags": {"Modality": "CT", "SeriesDescription": "<img src=x onerror=alert(1)>"},
               "Instances": ["i1", "i2"]},
              {"MainDicomTags": {"Modality": "SR"}, "Instances": ["r1"]}]
    reports = [{"findings": "<b>жирный</b>", "conclusion": "Образование & «тень»", "observer": "Сидоров^А"}]
    html = viewer.page(STUDY, series, reports, images="1.2.3/images/")
    assert "<img src=x" not in html and "&lt;img src=x" in html and "&lt;b&gt;жирный&lt;/b&gt;" in html
    assert "Образование &amp; «тень»" in html and "КТ &lt;грудной&gt; клетки" in html
    assert html.count('class="image"') == 2 and 'data-expected="2"' in html
    assert 'src="1.2.3/images/i1"' in html
    assert "01.12.2026" in html and "01.01.1970" in html
    assert "Заключение ещё не поступило" in viewer.page(STUDY, [], [], images="")


def test_a_reports_text_is_read_from_orthancs_tags_of_the_sr():
    tags = {"CompletionFlag": "COMPLETE",
            "ContentSequence": [
                {"ConceptNameCodeSequence": [{"CodeValue": "121070"}], "ContentSequence": [{"TextValue": "Протокол"}]},
                {"ConceptNameCodeSequence": [{"CodeValue": "121076"}],
                 "ContentSequence": [{"TextValue": "Образование"}, {"TextValue": "T1N0"}]}],
            "VerifyingObserverSequence": [{"VerifyingObserverName": "Сидоров^А"}]}
    assert viewer.report_of(tags) == {"findings": "Протокол", "conclusion": "Образование\nT1N0",
                                      "observer": "Сидоров^А", "status": "COMPLETE", "sop": "", "replaces": [],
                                      "time": ""}


def test_the_page_shows_the_report_in_force_not_the_one_a_correction_replaced():
    first = viewer.report_of({"SOPInstanceUID": "2.25.1", "ContentDate": "20261201", "ContentTime": "100000",
                              "ContentSequence": [{"ConceptNameCodeSequence": [{"CodeValue": "121076"}],
                                                   "ContentSequence": [{"TextValue": "Без патологии."}]}]})
    fixed = viewer.report_of({"SOPInstanceUID": "2.25.2", "ContentDate": "20261201", "ContentTime": "110000",
                              "PredecessorDocumentsSequence": [{"ReferencedSeriesSequence": [
                                  {"ReferencedSOPSequence": [{"ReferencedSOPInstanceUID": "2.25.1"}]}]}],
                              "ContentSequence": [{"ConceptNameCodeSequence": [{"CodeValue": "121076"}],
                                                   "ContentSequence": [{"TextValue": "Образование, T1N0."}]}]})
    assert fixed["replaces"] == ["2.25.1"]
    assert viewer.current([fixed, first]) == [fixed]
    html = viewer.page(STUDY, [], viewer.current([first, fixed]), images="")
    assert "Образование, T1N0." in html and "Без патологии." not in html and "заменяет предыдущее" in html
    # a second report on the same study that replaces nothing (another reading) is shown beside it
    other = dict(first, sop="2.25.3", replaces=[], time="20261201120000", conclusion="Второе мнение.")
    assert [r["conclusion"] for r in viewer.current([first, fixed, other])] == ["Образование, T1N0.", "Второе мнение."]
