# SPDX-License-Identifier: AGPL-3.0-or-later
"""KONTUR-REG-04 in Debian's Orthanc (issue 13): read from both archives, a
LAMI's study the TsAMI lacks is a finding naming it; with every study at the
TsAMI the control passes.  The control runs as in an audit, through
testinfra (its local backend here, SSH on a region), as the service account
whose password it reads from the credentials file."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import testinfra

from kontur.inventory import load
from kontur.testing.dicom import make_study
from kontur.testing.orthanc import OrthancProcess, wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "checks"))
import test_reglament  # noqa: E402

pytestmark = pytest.mark.orthanc
SMALL = REPO / "tests" / "data" / "small-region.yaml"


def test_a_lami_study_missing_at_the_tsami_is_named(tmp_path, processes):
    lami = OrthancProcess("city-lami", {}, tmp_path / "lami", password="pw-lami")
    tsami = OrthancProcess("tsami", {}, tmp_path / "tsami", password="pw-lami")
    processes += [lami, tsami]
    lami.start()
    tsami.start()
    text = SMALL.read_text(encoding="utf-8")
    text = text.replace("aet: CITY_LAMI", f"aet: CITY_LAMI\n    ports: {{http: {lami.http_port}}}")
    text = text.replace("aet: SM_TSAMI", f"aet: SM_TSAMI\n    ports: {{http: {tsami.http_port}}}")
    (tmp_path / "region.yaml").write_text(text, encoding="utf-8")
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"RegisteredUsers": {"kontur": "pw-lami"}}))
    local = testinfra.get_host("local://")
    target = types.SimpleNamespace(region=load(tmp_path / "region.yaml"), credentials=str(creds), min_age=-1.0,
                                   host=lambda node: local)

    both, only_here = make_study(1), make_study(1)
    for inst in both.instances:
        lami.upload(inst.data)
        tsami.upload(inst.data)
    for inst in only_here.instances:
        lami.upload(inst.data)
    with pytest.raises(AssertionError) as caught:
        test_reglament.test_the_tsami_holds_the_hospitals_studies_under_its_policy(local, target, "city-lami")
    message = str(caught.value)
    assert "1 of 2 studies" in message and only_here.study_uid in message and both.study_uid not in message

    for inst in only_here.instances:
        tsami.upload(inst.data)
    test_reglament.test_the_tsami_holds_the_hospitals_studies_under_its_policy(local, target, "city-lami")


def _target(tmp_path, ports: dict[str, int], policy: str = "all", password: str = "kontur-test"):
    """The small region with the nodes' REST on ``ports``, city under ``policy``; testinfra's local backend."""
    text = SMALL.read_text(encoding="utf-8").replace("    replication:\n      policy: all",
                                                     f"    replication:\n      policy: {policy}", 1)
    for aet, node in (("CITY_LAMI", "city-lami"), ("SM_TSAMI", "tsami")):
        if node in ports:
            text = text.replace(f"aet: {aet}", f"aet: {aet}\n    ports: {{http: {ports[node]}}}", 1)
    (tmp_path / "region.yaml").write_text(text, encoding="utf-8")
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({"RegisteredUsers": {"kontur": password}}))
    local = testinfra.get_host("local://")
    return local, types.SimpleNamespace(region=load(tmp_path / "region.yaml"), credentials=str(creds),
                                        plugins=str(REPO / "plugins"), min_age=-1.0, host=lambda node: local)


def test_under_pathology_a_flagged_study_missing_at_the_tsami_is_named(tmp_path, tsami, make_node):
    """KONTUR-REG-04 under ``pathology``: the node's flags (GET /kontur/flags) against the TsAMI; a study
    nobody flagged stays in the LAMI and is no finding."""
    from kontur.testing.replication import wait_delivered
    node = make_node(mode="pathology")
    flagged, other, plain = make_study(1), make_study(1), make_study(1)
    for s in (flagged, other, plain):
        node.store(s)
    for s in (flagged, other):
        node.orthanc.post("/kontur/flag", {"study": s.study_uid, "pathology": True})
    for s in (flagged, other):
        wait_delivered(tsami, s)
    # and the node is done with them (stable, verified): nothing sends them again after the TsAMI loses one
    for s in (flagged, other, plain):
        node.wait_processed(s)
    wait_for(lambda: (st := node.status())["delivered"] >= 2 and st["queue_depth"] == 0 and not st.get("in_flight"),
             60, message="the LAMI to verify both deliveries")
    local, target = _target(tmp_path, {"city-lami": node.orthanc.http_port, "tsami": tsami.http_port}, "pathology")
    listed = node.orthanc.get("/kontur/flags")
    assert listed["total"] == 2 and {f["study_uid"] for f in listed["flagged"]} == {flagged.study_uid, other.study_uid}
    test_reglament.test_the_tsami_holds_the_hospitals_studies_under_its_policy(local, target, "city-lami")
    [gone] = tsami.post("/tools/lookup", flagged.study_uid)
    tsami.delete(f"/studies/{gone['ID']}")
    with pytest.raises(AssertionError) as caught:
        test_reglament.test_the_tsami_holds_the_hospitals_studies_under_its_policy(local, target, "city-lami")
    message = str(caught.value)
    assert "1 of 2 studies flagged pathology" in message and flagged.study_uid in message
    assert other.study_uid not in message and plain.study_uid not in message


def test_a_tsami_study_lacking_part_of_the_package_is_named_with_what_it_lacks(tmp_path, tsami):
    """KONTUR-REG-05: a sample of the TsAMI's studies judged by the transfer package's own rules on the
    node: a study without its report and one without the physician's code are findings, each with its
    reason; the complete one is not; no name of a patient's is in the answer."""
    from kontur.testing.dicom import package_study
    complete = package_study(report=True)
    no_report = package_study()
    no_code = package_study(report=True, mutate=lambda ds: delattr(ds, "PerformingPhysicianIdentificationSequence"))
    for s in (complete, no_report, no_code):
        for inst in s.instances:
            tsami.upload(inst.data)
    local, target = _target(tmp_path, {"tsami": tsami.http_port})
    run = local.run(test_reglament.package_script(tsami.http_port, -1, {"": {"rules": ["report"]}},
                                                  target.credentials, target.plugins))
    assert run.rc == 0, run.stderr
    assert "Иванов" not in run.stdout and "19700101" not in run.stdout
    with pytest.raises(AssertionError) as caught:
        test_reglament.test_a_sample_of_tsami_studies_carries_the_whole_package(local, target, "tsami")
    message = str(caught.value)
    assert "2 of 3 sampled studies" in message, message
    assert f"{no_report.study_uid} (no issuer): the protocol and conclusion are not in the study yet" in message
    assert no_code.study_uid in message and "physician's regional code is missing" in message
    assert complete.study_uid not in message
    for s in (no_code, no_report):
        [bad] = tsami.post("/tools/lookup", s.study_uid)
        tsami.delete(f"/studies/{bad['ID']}")
    test_reglament.test_a_sample_of_tsami_studies_carries_the_whole_package(local, target, "tsami")
