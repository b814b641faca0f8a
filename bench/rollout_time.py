#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""How long the rehearsal of one hospital's roll-out takes in the lab (issue 14).

The example region is brought up and deployed (not timed), then, timed step by
step, what a MIAC engineer types to rehearse a new hospital:

  edits       ``kontur inventory add-hospital gkb5 …`` and ``add-modality``
  lab up      ``kontur lab up -i FILE`` on the running lab: one new host and a device
  deploy      ``kontur deploy --lab --limit gkb5-lami --limit tsami``
  first study ``kontur lab send GKB5_CT1 FILE`` until the study is at the TsAMI

The goal is under 3 minutes for the three commands after the two edits.  Also
printed: how many of the other hosts restarted a unit (should be 0).  The
baseline, timed in the same run, is what the rehearsal cost before the lab
followed its inventory: ``lab down``, ``lab up`` and a cold deploy of every
node of the grown region; the ratio is printed.  Needs root, like the lab;
brings the lab down at the end.

    .venv/bin/python bench/rollout_time.py
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SUMMARY = re.compile(r"hosts: (\d+), changed operations: (\d+), failed: (\d+)")
UNITS = ("orthanc.service", "nginx.service", "postgresql@15-main.service")


def kontur(*args: str, timeout: float = 3600) -> tuple[float, str]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", "import sys; from kontur.cli import main; sys.exit(main())", *args],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                       env=dict(os.environ, COLUMNS="200"))
    if p.returncode != 0:
        raise SystemExit(f"kontur {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-3000:]}")
    return time.monotonic() - t0, p.stdout


def stamps(state, nodes) -> dict:
    from kontur.lab.state import ssh_command
    got = {}
    for n in nodes:
        p = subprocess.run(ssh_command(state, n, "systemctl show -p MainPID -p ActiveEnterTimestampMonotonic "
                                       + " ".join(UNITS)), capture_output=True, text=True, timeout=60)
        got[n] = p.stdout
    return got


def main() -> int:
    from kontur.inventory import EXAMPLE_INVENTORY, load
    from kontur.lab.state import load_state
    from kontur.nodeapi import client_for
    from kontur.testing.dicom import make_study

    tmp = Path(tempfile.mkdtemp(prefix="kontur-rollout-"))
    shutil.copytree(EXAMPLE_INVENTORY.parent, tmp / "example")    # with the files it names (the classifier)
    inventory = tmp / "example" / EXAMPLE_INVENTORY.name
    os.environ.setdefault("KONTUR_LAB_DIR", "/var/lib/kontur/lab-bench")
    print("== example region: lab up and a cold deploy (not timed)", flush=True)
    kontur("lab", "up", "-i", str(inventory))
    try:
        kontur("deploy", "--lab", "-q", "-i", str(inventory))
        state = load_state()
        others = [n for n in state.hosts if n != "tsami"]
        before = stamps(state, others)
        steps: dict[str, float] = {}
        t0 = time.monotonic()
        kontur("inventory", "add-hospital", "gkb5", "-i", str(inventory), "--type", "1", "--title", "ГКБ №5",
               "--network", "10.42.7.0/24", "--address", "10.42.7.10", "--aet", "GKB5_LAMI",
               "--staff-name", "Иванов Иван Иванович", "--staff-position", "инженер ЛАМИ",
               "--work-phone", "+7 3842 00-07-10", "--mobile-phone", "+7 900 000-07-10")
        kontur("inventory", "add-modality", "gkb5", "-i", str(inventory), "--aet", "GKB5_CT1",
               "--host", "10.42.7.21", "--modality", "CT")
        steps["two edits"] = time.monotonic() - t0
        steps["lab up (follows the inventory)"], _ = kontur("lab", "up", "-i", str(inventory))
        seconds, out = kontur("deploy", "--lab", "-q", "-i", str(inventory), "--limit", "gkb5-lami",
                              "--limit", "tsami")
        steps["deploy --limit gkb5-lami --limit tsami"] = seconds
        m = SUMMARY.search(out)
        study = make_study(1, patient_id="G5-1", patient_name="Иванов^Пётр", accession="GKB5-BENCH")
        f = tmp / "ct.dcm"
        f.write_bytes(study.instances[0].data)
        t0 = time.monotonic()
        kontur("lab", "send", "GKB5_CT1", str(f))
        tsami = client_for(load(inventory), "tsami", lab=True)
        deadline = time.monotonic() + 600
        while not tsami.post("tools/find", {"Level": "Study", "Query": {"AccessionNumber": "GKB5-BENCH"}}):
            if time.monotonic() > deadline:
                raise SystemExit("the new hospital's study did not reach the TsAMI in 600 s")
            time.sleep(0.5)
        steps["first study: send until at the TsAMI"] = time.monotonic() - t0
        after = stamps(state, others)
        restarted = [n for n in others if before[n] != after[n]]
        print(f"{'step':45} {'seconds':>8}")
        for k, v in steps.items():
            print(f"{k:45} {v:8.1f}")
        three = sum(v for k, v in steps.items() if k != "two edits")
        print(f"{'the three commands after the edits':45} {three:8.1f}   (goal: under 180 s)")
        print(f"deploy: {m.group(1) if m else '?'} hosts, {m.group(2) if m else '?'} changed operations; "
              f"other hosts that restarted a unit: {len(restarted)} of {len(others)}"
              + (f" ({', '.join(restarted)})" if restarted else ""), flush=True)
        print("== baseline: lab down, lab up, a cold deploy of every node", flush=True)
        base: dict[str, float] = {}
        base["lab down"], _ = kontur("lab", "down")
        base["lab up"], _ = kontur("lab", "up", "-i", str(inventory))
        base["deploy --lab (every node)"], _ = kontur("deploy", "--lab", "-q", "-i", str(inventory))
        for k, v in base.items():
            print(f"{k:45} {v:8.1f}")
        total = sum(base.values())
        print(f"{'baseline':45} {total:8.1f}")
        like = steps["lab up (follows the inventory)"] + steps["deploy --limit gkb5-lami --limit tsami"]
        print(f"the rehearsal takes {three / total:.2f} of the baseline ({total / three:.1f}x faster)")
        print(f"like for like, lab up + deploy {like:.1f} s: {like / total:.2f} of the baseline "
              f"({total / like:.1f}x faster)")
    finally:
        kontur("lab", "down")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
