from __future__ import annotations

from kontur_plugins.transfer.identity import Person, conflict, orthanc_patient_id


def test_orthanc_patient_id_is_sha1_of_the_patient_id():
    assert orthanc_patient_id("12345") == "8cb2237d-0679ca88-db6464ea-c60da963-45513964"


def test_another_issuer_is_a_conflict():
    why = conflict("12345", Person("42-ONCO", "Иванов^Иван", "19700101"), Person("42-GKB3", "Иванов^Иван", "19700101"))
    assert why and "42-GKB3" in why and "another hospital" in why


def test_same_issuer_other_name_and_birth_date_is_a_conflict():
    why = conflict("12345", Person("42-ONCO", "Иванов^Иван", "19700101"), Person("42-ONCO", "Петрова^Анна", "19851231"))
    assert why and "another name and birth date" in why


def test_the_same_person_written_differently_is_not():
    assert conflict("1", Person("42-ONCO", "Фёдоров^Иван", "19700101"), Person("42-ONCO", "ФЕДОРОВ ИВАН", "19700101")) is None
    # a corrected name with the same birth date, or a corrected birth date with the same name
    assert conflict("1", Person("42-ONCO", "Иванов^Иван", "19700101"), Person("42-ONCO", "Иванова^Инна", "19700101")) is None
    assert conflict("1", Person(None, "Иванов^Иван", "19700101"), Person(None, "Иванов^Иван", "19700102")) is None
