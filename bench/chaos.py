#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""The chaos run (issue 9): a stream of studies from three simulated
modalities into the replication region's LAMIs and gateway, deployed in the
lab, while a fault is injected every 20-40 s at random -- a link cut and
healed, kill -9 of a LAMI's or the TsAMI's Orthanc, a host reboot, the
TsAMI's disk full for a minute, a PostgreSQL restart -- then the backlog
drains and a ledger of every SOP Instance UID sent is checked against what
the TsAMI holds, read from the TsAMI itself.

    .venv/bin/python bench/chaos.py [--minutes 30] [--instances 10000] [--seed N]

Prints instances sent, faults injected by kind, drain time after the last
fault, and the verdict: 0 lost / 0 extra / 0 misfiled.  Brings the lab up and
deploys the region if they are not up (and takes down what it brought up).
Exit 0 if the ledger holds, 1 otherwise.  Run as root.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "deploy"))

from deploy_helpers import deploy, on_host  # noqa: E402
from kontur.inventory import load  # noqa: E402
from kontur.lab import ops  # noqa: E402
from kontur.lab.state import load_state  # noqa: E402
from kontur.testing.chaos import Chaos  # noqa: E402

REGION = REPO / "tests" / "data" / "replication-region.yaml"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--instances", type=int, default=10_000, help="stop sending after this many (default 10,000)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/chaos.py: run as root (the lab)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10 ** 6)
    region = load(REGION)
    running = load_state()
    brought_up = False
    if running is None or Path(running.inventory).resolve() != REGION.resolve() or running.status != "up":
        if running is not None:
            print(f"bench/chaos.py: another lab is up ({running.inventory}); bring it down first", file=sys.stderr)
            return 2
        print("bringing the lab of the replication region up", flush=True)
        ops.up(region, REGION, progress=lambda m: print(f"  {m}", flush=True))
        brought_up = True
    try:
        r = deploy(REGION)
        if r.rc != 0:
            print(r.out[-3000:], file=sys.stderr)
            return 1
        print(r.out.strip().splitlines()[-1], flush=True)
        with tempfile.TemporaryDirectory(prefix="kontur-chaos-") as tmp:
            chaos = Chaos(load_state(), region, seed=seed, seconds=args.minutes * 60, instances=args.instances,
                          workdir=Path(tmp), on_host=on_host, study_size=(1, 8), pixel_bytes=8192,
                          log=lambda m: print(m, flush=True))
            report = chaos.run()
        print()
        for line in report.lines():
            print(line)
        if not report.ok:
            for what in ("lost", "extra", "misfiled", "duplicates", "leaked"):
                print(f"  {what}: {getattr(report, what)[:10]}")
        return 0 if report.ok else 1
    finally:
        if brought_up and not args.keep_lab:
            ops.down(progress=lambda m: print(f"  {m}", flush=True))


if __name__ == "__main__":
    sys.exit(main())
