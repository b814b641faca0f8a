# SPDX-License-Identifier: AGPL-3.0-or-later
"""The chaos run's short variant in the lab (issue 9): studies from three
simulated modalities stream into the deployed replication region while every
fault kind -- a cut link, kill -9 of an Orthanc, a host reboot, the TsAMI's
disk full for a minute, a PostgreSQL restart -- is injected at random (seeded)
once or twice; afterwards the ledger of every SOP Instance UID sent is checked
against the TsAMI's own answer: 0 lost, 0 extra, 0 misfiled, none twice, no
unflagged pathology study.  ``bench/chaos.py`` is the long run."""
from __future__ import annotations

import os

import pytest

from kontur.testing.chaos import KINDS, Chaos

from deploy_helpers import on_host

pytestmark = pytest.mark.lab

SEED = int(os.environ.get("KONTUR_CHAOS_SEED", "20261201"))


def test_chaos_loses_nothing_duplicates_nothing_misfiles_nothing(deployed, region, tmp_path, figures):
    # every kind once, 6-12 s apart (a fault's own time comes on top: a reboot, a minute of full disk);
    # bench/chaos.py is the long run
    chaos = Chaos(deployed, region, seed=SEED, seconds=float(os.environ.get("KONTUR_CHAOS_SECONDS", "100")),
                  interval=(6, 12), workdir=tmp_path, on_host=on_host, study_size=(1, 4), pixel_bytes=2048,
                  tmpfs_mb=1024)
    report = chaos.run()
    for line in report.lines():
        figures.append(line)
    assert set(report.faults) == set(KINDS), f"not every fault kind was injected: {report.faults}"
    assert report.drain_seconds is not None, "\n".join(report.lines() + report.fault_log)
    assert report.expected > 0 and report.studies >= 10
    assert report.ok, "\n".join(report.lines() + report.fault_log
                                + [f"lost {report.lost[:5]}", f"extra {report.extra[:5]}",
                                   f"misfiled {report.misfiled[:5]}", f"twice {report.duplicates[:5]}",
                                   f"leaked {report.leaked[:5]}"])
