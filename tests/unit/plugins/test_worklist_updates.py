"""The MIS's patient updates on stored studies: which Patient ID they carry,
at which level Orthanc 1.10 can modify them, and the request."""
from __future__ import annotations

from kontur_plugins.worklist import updates

UPDATE = {"id": 7, "kind": "update", "old_id": "12345", "new_id": "12345", "issuer": "42-ONCO",
          "name": "Петров^Пётр", "birth_date": "19700101", "sex": "M", "control_id": "U1"}


def test_a_demographics_update_is_applied_study_by_study_keeping_the_patient_id():
    assert updates.level(UPDATE) == "studies"
    body = updates.modify_request(UPDATE, regional=True)
    assert body == {"Replace": {"PatientName": "Петров^Пётр", "PatientBirthDate": "19700101", "PatientSex": "M"},
                    "KeepSource": False}


def test_a_merge_changes_the_patient_id_at_patient_level_under_the_regional_key():
    merge = dict(UPDATE, kind="merge", old_id="12345", new_id="777")
    assert updates.level(merge) == "patients"
    body = updates.modify_request(merge, regional=True)
    assert body["Force"] is True and body["Replace"]["PatientID"] == "42-ONCO:777"
    assert body["Replace"]["OtherPatientIDsSequence"] == [
        {"PatientID": "777", "IssuerOfPatientID": "42-ONCO", "TypeOfPatientID": "TEXT"}]
    local = updates.modify_request(merge, regional=False)
    assert local["Replace"]["PatientID"] == "777" and "OtherPatientIDsSequence" not in local["Replace"]


def test_the_stored_patient_id_follows_the_regions_patient_key():
    assert updates.stored_id("12345", "42-ONCO", regional=True) == "42-ONCO:12345"
    assert updates.stored_id("12345", "42-ONCO", regional=False) == "12345"


def test_a_log_line_names_the_update_not_the_patient():
    line = updates.describe(UPDATE)
    assert "U1" in line and "#7" in line and "Петров" not in line and "12345" not in line


def test_an_item_scheduled_long_ago_is_no_longer_offered():
    import datetime as dt

    from kontur_plugins.worklist import items
    today = dt.date(2026, 12, 1)
    old, recent, undated = ({"scheduled": "20261120090000"}, {"scheduled": "20261125090000"}, {"scheduled": ""})
    assert items.offered([old, recent, undated], today, expire_days=7) == [recent, undated]


def test_the_items_study_ids_cover_the_hospitals_and_the_regional_patient_id():
    from kontur_plugins.replication.reconcile import orthanc_study_id
    from kontur_plugins.worklist import items
    it = {"study_uid": "1.2.3", "patient": {"id": "12345", "issuer": "42-ONCO"}}
    assert items.study_ids(it) == [orthanc_study_id("12345", "1.2.3"), orthanc_study_id("42-ONCO:12345", "1.2.3")]
