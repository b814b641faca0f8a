# SPDX-License-Identifier: AGPL-3.0-or-later
"""Helpers of the deploy lab tests: the real ``kontur`` command line in a
subprocess (pyinfra's gevent patches the process it runs in: never the test
process), commands on lab hosts over the lab's SSH, DCMTK tools inside a
modality's network namespace, and a small DICOM file."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SUMMARY = re.compile(r"hosts: (\d+), (?:changed operations|operations to change): (\d+), failed: (\d+)")


@dataclass
class Run:
    rc: int
    out: str
    hosts: int
    changed: int
    failed: int

    def lines(self, node: str) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith(f"{node}: ")]


def kontur(*args: str, timeout: float = 1200) -> Run:
    """``kontur ARGS`` in a subprocess; stdout and stderr together."""
    env = dict(os.environ, COLUMNS="200")
    p = subprocess.run([sys.executable, "-c", "import sys; from kontur.cli import main; sys.exit(main())", *args],
                       cwd=REPO, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    m = SUMMARY.search(p.stdout)
    hosts, changed, failed = (int(g) for g in m.groups()) if m else (-1, -1, -1)
    return Run(p.returncode, p.stdout, hosts, changed, failed)


def deploy(inventory: Path, *extra: str) -> Run:
    return kontur("deploy", "--lab", "-i", str(inventory), *extra)


def follow(lab, inventory: Path) -> Run:
    """``kontur lab up -i INVENTORY`` on the running lab (it follows the inventory), and the
    session's ``lab`` state brought up to date in place (every test holds the same object)."""
    from kontur.lab.state import load_state
    r = kontur("lab", "up", "-i", str(inventory))
    assert r.rc == 0, r.out
    lab.__dict__.update(load_state().__dict__)
    return r


def on_host(state, node: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    from kontur.lab.state import ssh_command
    return subprocess.run(ssh_command(state, node, command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def in_netns(netns: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run(["ip", "netns", "exec", netns, *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=timeout)


def unit_stamp(state, node: str, units: tuple[str, ...] = ("orthanc.service", "nginx.service")) -> dict:
    """MainPID and start time of ``units`` on ``node``: equal before and after
    means the unit was not restarted."""
    p = on_host(state, node, "systemctl show -p Id -p MainPID -p ActiveEnterTimestampMonotonic " + " ".join(units))
    assert p.returncode == 0, p.stderr
    stamps, cur = {}, {}
    for line in p.stdout.splitlines() + [""]:
        if not line.strip():
            if cur.get("Id"):
                stamps[cur["Id"]] = (cur.get("MainPID"), cur.get("ActiveEnterTimestampMonotonic"))
            cur = {}
            continue
        k, _, v = line.partition("=")
        cur[k] = v
    return stamps


def write_dicom(path: Path, patient: str = "KONTUR^TEST") -> Path:
    """A small, valid CT instance."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = patient, "KONTUR-TEST-1", "CT"
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = bytes(8 * 8 * 2)
    ds.save_as(str(path), enforce_file_format=True)
    return path
