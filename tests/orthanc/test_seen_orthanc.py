# SPDX-License-Identifier: AGPL-3.0-or-later
"""The last study per device (issue 13): a study C-STOREd by a device is
recorded under the AE title that sent it, in Debian's Orthanc with kontur's
plugin; a study uploaded over REST (no calling AE) is not; the record
survives a restart (it is in the node's state, not in memory)."""
from __future__ import annotations

import pytest

from kontur.testing.dicom import make_study
from kontur.testing.orthanc import wait_for
from kontur.testing.replication import SCU_AET

pytestmark = pytest.mark.orthanc


def test_a_devices_study_is_recorded_under_its_ae_title_and_survives_a_restart(make_node):
    node = make_node(mode="on-demand")
    first = node.orthanc.get("/kontur/seen")
    assert first["devices"] == {} and first["since"] > 0

    uploaded = make_study(1)
    for inst in uploaded.instances:
        node.orthanc.upload(inst.data)
    study = make_study(2)
    node.store(study)
    seen = wait_for(lambda: node.orthanc.get("/kontur/seen")["devices"] or None, 30,
                    message=f"{SCU_AET} in /kontur/seen")
    assert list(seen) == [SCU_AET]
    assert seen[SCU_AET]["study"] == study.orthanc_id()
    assert seen[SCU_AET]["at"] >= first["since"]

    node.orthanc.restart()
    again = node.orthanc.get("/kontur/seen")
    assert again["devices"] == seen and again["since"] == first["since"]
