# SPDX-License-Identifier: AGPL-3.0-or-later
"""Issue 16, the research feed's pure pieces: profiles and feeds as the policy
carries them, keyed pseudonyms, the fold the leak scan compares by, text
cleaning, what is held back, and the key map's audited re-identification."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from kontur_plugins.research.deid import held_back
from kontur_plugins.research.feeds import FeedError, StudyFacts, matches, parse_research, parse_selection
from kontur_plugins.research.identity import clean_text, fold, identity_of, leaks
from kontur_plugins.research.keymap import KeyMap
from kontur_plugins.research.profile import Profile, ProfileError, parse_profile
from kontur_plugins.research.pseudonyms import Keys

KEY = bytes(range(32))


def test_profile_options_and_their_request_to_orthanc():
    p = parse_profile({"options": ["retain_modified_dates", "clean_descriptors"],
                       "safe_private": [{"tag": "0019,100c", "creator": "GEMS_ACQU_01"}]})
    body = p.orthanc_request({"PatientID": "R-1"})
    assert body["DicomVersion"] == "2021b" and body["KeepPrivateTags"] is False
    assert {"StudyDate", "StudyDescription", "SOPInstanceUID", "0008,1155"} <= set(body["Keep"])
    assert "StationName" not in body["Keep"] and "PatientSex" not in body["Keep"]
    assert p.safe_private == (("0019,100C", "GEMS_ACQU_01"),)
    assert [c for c, _ in p.method_codes()] == ["113100", "113105", "113107"]
    assert len(p.method_text()) <= 64
    assert "StudyDate" not in Profile().orthanc_request({})["Keep"]


@pytest.mark.parametrize("doc,word", [
    ({"options": ["clean_pixels"]}, "'clean_pixels' is not a PS3.15 option"),
    ({"options": "retain_modified_dates"}, "expected a list"),
    ({"burned_in": "maybe"}, "burned_in is 'maybe'; expected hold"),
    ({"safe_private": [{"tag": "0008,0080", "creator": "X"}]}, "an odd group"),
    ({"safe_private": [{"tag": "0019,1001"}]}, "creator"),
    ({"retain": True}, "unknown key(s) retain"),
])
def test_a_bad_profile_names_what_is_wrong(doc, word):
    with pytest.raises(ProfileError) as err:
        parse_profile(doc)
    assert any(word in p for p in err.value.problems), err.value.problems


def test_a_feed_that_selects_nothing_or_has_no_destination_is_refused():
    with pytest.raises(FeedError) as err:
        parse_research({"research": {"feeds": {"f": {"select": {}, "profile": {}}}}})
    assert any("selects nothing" in p for p in err.value.problems)
    assert any("destination" in p for p in err.value.problems)
    problems: list[str] = []
    parse_selection({"since": "2026-01-01", "colour": ["x"]}, "s", problems)
    assert any("YYYYMMDD" in p for p in problems) and any("unknown key(s) colour" in p for p in problems)


def test_selection_every_key_must_hold():
    cfg = parse_research({"research": {"feeds": {"f": {"destination": "research", "select": {
        "hospitals": ["onco"], "modalities": ["CT"], "since": "20260101"}}}}})
    sel = cfg.feeds["f"].select
    assert matches(sel, StudyFacts("onco", {"CT"}, date="20260310"))[0]
    assert not matches(sel, StudyFacts("gkb3", {"CT"}, date="20260310"))[0]
    assert "modalities MR" in matches(sel, StudyFacts("onco", {"MR"}, date="20260310"))[1]
    assert "before 20260101" in matches(sel, StudyFacts("onco", {"CT"}, date="20251231"))[1]


def test_pseudonyms_are_keyed_repeatable_and_apart():
    k, other = Keys(KEY, "42"), Keys(bytes(32), "42")
    assert k.patient("ENP", "1") == Keys(KEY, "42").patient("ENP", "1") != other.patient("ENP", "1")
    assert k.patient("ENP", "1") != k.patient("ENP", "2") != k.patient("42-ONCO", "1")
    assert k.uid("1.2.3") == k.uid("1.2.3") != k.uid("1.2.4")
    assert k.uid("1.2.3").startswith("2.25.") and len(k.uid("1.2.3")) <= 64
    shifts = {k.date_shift_days("ENP", str(i)) for i in range(200)}
    assert all(-3680 <= s <= -30 for s in shifts) and len(shifts) > 100
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Keys(b"short")


@pytest.mark.parametrize("a,b", [("Иванов", "IVANOV"), ("Иванов", "Iwanow"), ("Сергеевич", "Sergeyevich"),
                                 ("Юлия", "Yuliya"), ("Хабибуллин", "Khabibullin"), ("Цой", "Tsoy"),
                                 ("Жуков", "Zhukov"), ("Щукина", "Shchukina")])
def test_fold_meets_cyrillic_and_its_transliterations(a, b):
    assert fold(a) == fold(b)


def _patient() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Иванов^Пётр"
    ds.PatientID = "42-ONCO:55101"
    ds.PatientBirthDate = "19580317"
    ds.PatientTelephoneNumbers = "+7(3842)551234"
    ds.InstitutionName = "Кузбасский онкодиспансер"
    return ds


def test_leaks_are_found_in_sequences_and_private_elements_and_named_by_place_not_value():
    idn = identity_of(_patient())
    copy = Dataset()
    item = Dataset()
    item.TextValue = "осмотрен IVANOV P."
    copy.ContentSequence = Sequence([item])
    copy.add_new(0x00091001, "LO", "тел 8 3842 55-12-34")
    copy.StudyDescription = "CT chest"
    copy.ImageComments = "д.р. 17.03.1958"
    found = {str(x) for x in leaks(copy, idn)}
    assert found == {"(0040,A730)[0]/(0040,A160): patient or staff name", "(0009,1001): phone number",
                     "(0020,4000): birth date"}, found
    assert not any("IVANOV" in f or "1958" in f for f in found)


def test_clean_text_removes_the_identity_and_keeps_the_rest():
    idn = identity_of(_patient())
    out = clean_text("Пациент Иванов П., Ivanov, тел. +7 (3842) 55-12-34, д.р. 17.03.1958: очаг 14 мм", idn)
    assert "очаг 14 мм" in out and "Иванов" not in out and "Ivanov" not in out
    assert "1958" not in out and "3842" not in out
    assert clean_text("КТ органов грудной клетки", idn) == "КТ органов грудной клетки"


def _image(modality: str, sop_class: str, burned: str | None) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SOPClassUID = modality, sop_class
    ds.PixelData = b"\x00\x00"
    if burned is not None:
        ds.BurnedInAnnotation = burned
    return ds


@pytest.mark.parametrize("modality,sop_class,burned,held", [
    ("US", "1.2.840.10008.5.1.4.1.1.6.1", None, True), ("US", "1.2.840.10008.5.1.4.1.1.6.1", "NO", False),
    ("OT", "1.2.840.10008.5.1.4.1.1.7", None, True), ("CT", "1.2.840.10008.5.1.4.1.1.2", None, False),
    ("CT", "1.2.840.10008.5.1.4.1.1.2", "YES", True), ("ES", "1.2.840.10008.5.1.4.1.1.77.1.1", None, True),
])
def test_burned_in_risk_is_held_back_unless_the_feed_declares_it_cleaned(modality, sop_class, burned, held):
    ds = _image(modality, sop_class, burned)
    assert (held_back(ds, Profile()) is not None) == held
    assert held_back(ds, Profile(burned_in="cleaned")) is None


def test_documents_and_sr_without_the_option_are_held_back():
    doc = Dataset()
    doc.Modality, doc.EncapsulatedDocument = "DOC", b"%PDF"
    assert "encapsulated document" in held_back(doc, Profile(frozenset({"clean_structured_content"})))
    sr = Dataset()
    sr.Modality, sr.ContentSequence = "SR", Sequence([])
    assert "clean_structured_content" in held_back(sr, Profile())
    assert held_back(sr, Profile(frozenset({"clean_structured_content"}))) is None


def test_the_key_map_reidentifies_by_pseudonym_or_study_and_audits_every_ask(tmp_path):
    km = KeyMap(str(tmp_path / "keymap.sqlite"))
    km.record(pseudonym="R42-AB", issuer="ENP", patient_id="4250000012345678", patient_name="Иванов^Пётр",
              birth_date="19580317", new_study_uid="2.25.1", original_study_uid="1.2.3", feed="onco-ct")
    assert km.reidentify("R42-AB", who="archivist", reason="clinical return").patient_name == "Иванов^Пётр"
    assert km.reidentify("2.25.1", who="archivist", reason="x").original_study_uid == "1.2.3"
    assert km.reidentify("R42-NONE", who="someone", reason="curiosity") is None
    trail = km.audit_trail()
    assert [(w, r, a, ans) for _, w, r, a, ans in trail] == [
        ("archivist", "clinical return", "R42-AB", "found"), ("archivist", "x", "2.25.1", "found"),
        ("someone", "curiosity", "R42-NONE", "unknown pseudonym or study")]
    km.close()


def test_a_pathology_only_selection_is_a_selection_and_judges_the_studys_reports():
    problems: list[str] = []
    sel = parse_selection({"pathology_only": True}, "select", problems)
    assert problems == [] and sel.pathology_only and not sel.empty()
    parse_selection({"hospitals": ["onco"], "pathology_only": "yes"}, "select", problems)
    assert problems == ["select.pathology_only is 'yes'; expected true or false"]
    sel = parse_selection({"hospitals": ["onco"], "pathology_only": True}, "select", [])
    ok, why = matches(sel, StudyFacts(hospital="onco"))
    assert not ok and "marks pathology" in why
    assert matches(sel, StudyFacts(hospital="onco", pathology=True)) == (True, "selected")
    assert matches(parse_selection({"hospitals": ["onco"]}, "select", []), StudyFacts(hospital="onco"))[0]


def test_a_failed_de_identification_is_held_back_and_its_reason_names_no_one(tmp_path):
    """Orthanc's (or pydicom's) error may quote a value of the instance: the reason the exporter prints and
    the CLI shows is cleaned of the study's identity, like any descriptor."""
    import io

    import pydicom

    from kontur.testing.research import build_corpus
    from kontur_plugins.research.export import Exporter
    item = next(i for i in build_corpus().items if i.kind == "CT")
    ds = pydicom.dcmread(io.BytesIO(item.data))
    name, pid = str(ds.PatientName), str(ds.PatientID)

    class Archive:
        def study_instances(self, study_id):
            return ["i1"]

        def file(self, iid):
            return item.data

        def anonymize(self, iid, body):
            raise RuntimeError(f"Orthanc answered 500: bad value {name} for patient {pid}, "
                               f"call {name.split('^')[0]} first")

    config = parse_research({"research": {"region_code": "42", "hospitals": {"42-ONCO": "onco", "42-GKB3": "gkb3"},
                                          "feeds": {"f": {"destination": "research", "select": {"modalities": ["CT"]},
                                                          "profile": {}}}}})
    delivered = []
    out = Exporter(config, Keys(KEY, "42"), KeyMap(str(tmp_path / "k.sqlite")), Archive(),
                   lambda peer, data: delivered.append(data)).export_study("f", "s1")
    (held,) = out.held
    assert held.reason.startswith("de-identification failed (RuntimeError: Orthanc answered 500"), held.reason
    assert name.split("^")[0] not in held.reason and pid not in held.reason, held.reason
    assert delivered == [] and out.delivered == []
