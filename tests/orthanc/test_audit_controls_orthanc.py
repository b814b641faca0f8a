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
from kontur.testing.orthanc import OrthancProcess

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
