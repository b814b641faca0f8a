#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""How long ``kontur deploy`` takes, in the lab.

For each region: bring its lab up, then time

  cold        the first deploy onto clean hosts (packages from the lab's repository)
  no-change   a re-deploy with the same inventory (best and median of --repeat runs)
  one change  one hospital's modality list changed (its LAMI restarts, nothing else)

and bring the lab down.  Regions: the example region (8 nodes) and a
generated one (``kontur.regiongen``: --hospitals LAMIs + 2 gateways + a
reference centre + TsAMI + research).  Needs root, like the lab.

    .venv/bin/python bench/deploy_times.py                      # both regions
    .venv/bin/python bench/deploy_times.py --region generated --hospitals 10

Times are wall-clock seconds of the whole ``kontur deploy`` process (Python
start-up, SSH connections, facts, operations) as an operator sees them.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"hosts: (\d+), changed operations: (\d+), failed: (\d+)")


def kontur(*args: str, timeout: float = 3600) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", "import sys; from kontur.cli import main; sys.exit(main())", *args],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                       env=dict(os.environ, COLUMNS="200"))
    return time.monotonic() - t0, p


def deploy(inventory: Path, quiet: bool = True) -> tuple[float, int, int, int, str]:
    seconds, p = kontur("deploy", "--lab", *(["-q"] if quiet else []), "-i", str(inventory))
    m = SUMMARY.search(p.stdout)
    if p.returncode != 0 or not m:
        raise SystemExit(f"deploy failed ({p.returncode}):\n{p.stdout[-3000:]}")
    hosts, changed, failed = (int(g) for g in m.groups())
    return seconds, hosts, changed, failed, p.stdout


def one_hospital_change(inventory: Path) -> tuple[str, str]:
    """Remove the last modality of the first type-1 hospital with two or more."""
    sys.path.insert(0, str(REPO))
    from kontur.inventory import load
    region = load(inventory)
    for key, h in region.hospitals.items():
        if h.type.value == 1 and len(h.modalities) >= 2:
            aet = h.modalities[-1].aet
            _s, p = kontur("inventory", "remove-modality", aet, "-i", str(inventory))
            if p.returncode != 0:
                raise SystemExit(p.stdout)
            return key, aet
    raise SystemExit("no type-1 hospital with two modalities")


def bench(label: str, inventory: Path, repeat: int) -> dict:
    print(f"== {label}: lab up", flush=True)
    seconds, p = kontur("lab", "up", "-i", str(inventory))
    if p.returncode != 0:
        raise SystemExit(p.stdout)
    try:
        cold = deploy(inventory)
        print(f"   cold deploy: {cold[0]:.1f} s ({cold[1]} hosts, {cold[2]} changed operations)", flush=True)
        runs = [deploy(inventory) for _ in range(repeat)]
        bad = [r for r in runs if r[2] != 0]
        if bad:
            raise SystemExit(f"a no-change re-deploy changed {bad[0][2]} operations:\n{bad[0][4]}")
        times = [r[0] for r in runs]
        print(f"   no-change re-deploy: best {min(times):.1f} s, median {statistics.median(times):.1f} s "
              f"({repeat} runs, 0 changed operations)", flush=True)
        hospital, aet = one_hospital_change(inventory)
        change = deploy(inventory, quiet=False)
        # progress lines are "node: step" for every changed operation
        changed_hosts = sorted({ln.split(":", 1)[0] for ln in change[4].splitlines()
                                if re.match(r"^[a-z0-9-]+: (?!done,)", ln) and not ln.startswith("hosts:")})
        print(f"   one-hospital change ({hospital}: {aet} removed): {change[0]:.1f} s, "
              f"{change[2]} changed operations", flush=True)
        return {"region": label, "hosts": cold[1], "cold": cold[0], "no_change_best": min(times),
                "no_change_median": statistics.median(times), "one_change": change[0],
                "one_change_ops": change[2], "changed_hosts": changed_hosts}
    finally:
        _s, p = kontur("lab", "down")
        print(f"   lab down: {'ok' if p.returncode == 0 else p.stdout.strip()}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--region", choices=["example", "generated", "both"], default="both")
    ap.add_argument("--hospitals", type=int, default=8, help="type-1 hospitals of the generated region")
    ap.add_argument("--repeat", type=int, default=3, help="no-change re-deploys to time")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("deploy_times: needs root (the lab)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    results = []
    with tempfile.TemporaryDirectory(prefix="kontur-bench-") as tmp:
        if args.region in ("example", "both"):
            inv = Path(tmp) / "example.yaml"
            shutil.copy(REPO / "inventory" / "example" / "region.yaml", inv)
            results.append(bench("example region", inv, args.repeat))
        if args.region in ("generated", "both"):
            from kontur.regiongen import generate_region
            inv = Path(tmp) / "generated.yaml"
            inv.write_text(generate_region(args.hospitals), encoding="utf-8")
            results.append(bench(f"generated region ({args.hospitals} LAMIs)", inv, args.repeat))
    print()
    print(f"{'region':34} {'hosts':>5} {'cold s':>7} {'no-change s':>12} {'one change s':>13}  changed hosts")
    for r in results:
        print(f"{r['region']:34} {r['hosts']:>5} {r['cold']:>7.1f} {r['no_change_best']:>12.1f} "
              f"{r['one_change']:>13.1f}  {', '.join(r['changed_hosts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
