#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""How long ``kontur check`` takes on a deployed lab region (issue 13), and
what one unreachable node adds.

    sudo .venv/bin/python bench/check_time.py [--region example|generated20] [--runs 3] [--reuse]

``example`` is inventory/example/region.yaml (8 nodes); ``generated20`` a
generated region of 20 nodes (kontur.regiongen: a TsAMI, research, a
reference centre, 15 LAMIs, 2 gateways).  The lab is its own
(``$KONTUR_LAB_DIR``, default /var/lib/kontur/lab-bench), brought up and
deployed, and brought down at the end (``--reuse``: a running, deployed lab
of the region is used and left up).

Measured: the median wall time of ``kontur check --lab`` over ``--runs``;
then one node is cut off the lab network (``kontur lab cut``) and the check
is timed again with ``--timeout T``: the extra time must stay within T (the
dead node costs its timeout, in parallel with the others, not a hang).

Goals: under 5 s for 20 nodes; one unreachable node adds no more than its timeout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("KONTUR_LAB_DIR", "/var/lib/kontur/lab-bench")

from kontur.inventory import EXAMPLE_INVENTORY, load  # noqa: E402
from kontur.lab import ops  # noqa: E402
from kontur.lab.state import load_state  # noqa: E402
from kontur.regiongen import generate_region  # noqa: E402

KONTUR = str(REPO / ".venv" / "bin" / "kontur")


def region_file(which: str, tmp: Path) -> Path:
    if which == "example":
        return EXAMPLE_INVENTORY
    path = tmp / "generated20.yaml"
    path.write_text(generate_region(15, gateways=2, name="bench20"), encoding="utf-8")
    return path


#: CPU seconds the control machine spent in the checks (kontur and its ssh clients)
CONTROL_CPU: list[float] = []
#: CPU seconds the whole machine spent meanwhile (the control machine and every lab host: one kernel)
MACHINE_CPU: list[float] = []


def _busy_seconds() -> float:
    """CPU time the machine has been busy since boot (/proc/stat, every core)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed_check(path: Path, *extra: str) -> tuple[float, int, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = _busy_seconds()
    t0 = time.monotonic()
    p = subprocess.run([KONTUR, "check", "--lab", "-i", str(path), *extra], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "COLUMNS": "200"})
    seconds = time.monotonic() - t0
    MACHINE_CPU.append(_busy_seconds() - busy)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CONTROL_CPU.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return seconds, p.returncode, p.stdout + p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--region", choices=("example", "generated20"), default="example")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=5.0, help="the check's per-node timeout when a node is cut")
    ap.add_argument("--reuse", action="store_true", help="use the running, deployed lab of the region; leave it up")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kontur-bench-") as tmp:
        path = region_file(args.region, Path(tmp))
        region = load(path)
        started = False
        try:
            if args.reuse:
                st = load_state()
                if st is None or st.region_name != region.region.name:
                    print(f"bench: --reuse needs a running lab of {path}", file=sys.stderr)
                    return 2
            else:
                ops.up(region, path, progress=lambda m: print(f"· {m}", file=sys.stderr))
                started = True
                t0 = time.monotonic()
                p = subprocess.run([KONTUR, "deploy", "--lab", "-i", str(path)], capture_output=True, text=True,
                                   timeout=3600)
                if p.returncode != 0:
                    raise RuntimeError(f"deploy failed: {p.stdout[-1500:]}{p.stderr[-1500:]}")
                print(f"· deployed {len(region.nodes)} nodes in {time.monotonic() - t0:.0f} s", file=sys.stderr)
            times, rcs = [], []
            for _ in range(args.runs):
                seconds, rc, text = timed_check(path)
                times.append(seconds)
                rcs.append(rc)
            if any(rcs):
                print(f"bench: the check was not green on the fresh region:\n{text[-3000:]}", file=sys.stderr)
            healthy = statistics.median(times)
            control_cpu = statistics.median(CONTROL_CPU)
            machine_cpu = statistics.median(MACHINE_CPU)
            # one node alone: what a node's own probe costs when no other host shares its cores
            alone = statistics.median(timed_check(path, "--node", next(
                n for n, s in region.nodes.items() if s.role.value == "lami"))[0] for _ in range(args.runs))
            victim = next(n for n, s in region.nodes.items() if s.role.value == "lami")
            subprocess.run([KONTUR, "lab", "cut", victim], check=True, capture_output=True)
            try:
                cut, rc, text = timed_check(path, "--timeout", str(args.timeout))
            finally:
                subprocess.run([KONTUR, "lab", "heal", victim], check=True, capture_output=True)
            with_timeout, _, _ = timed_check(path, "--timeout", str(args.timeout))
            result = {"region": args.region, "nodes": len(region.nodes), "runs": args.runs,
                      "check_seconds_median": round(healthy, 2), "check_seconds_all": [round(t, 2) for t in times],
                      "green": not any(rcs), "control_cpu_seconds_median": round(control_cpu, 2),
                      "machine_cpu_seconds_median": round(machine_cpu, 2), "cores": os.cpu_count(),
                      "cores_busy_percent": round(100 * machine_cpu / (healthy * (os.cpu_count() or 1)), 0),
                      "one_node_alone_seconds_median": round(alone, 2),
                      "one_node_cut": {"node": victim, "timeout": args.timeout, "seconds": round(cut, 2),
                                       "healthy_seconds_same_timeout": round(with_timeout, 2),
                                       "added_seconds": round(cut - with_timeout, 2),
                                       "within_timeout": cut - with_timeout <= args.timeout, "exit": rc,
                                       "named": victim in text and "unreachable" in text}}
        finally:
            if started:
                ops.down(progress=lambda m: print(f"· {m}", file=sys.stderr))
    print(f"kontur check, {result['region']} ({result['nodes']} nodes): median {result['check_seconds_median']:.2f} s "
          f"over {args.runs} runs (goal < 5 s for 20 nodes); the control machine's CPU "
          f"{result['control_cpu_seconds_median']:.2f} s (kontur and its ssh clients)")
    print(f"the machine (control and every lab host) was busy {result['machine_cpu_seconds_median']:.1f} CPU-s "
          f"meanwhile: {result['cores_busy_percent']:.0f}% of its {result['cores']} cores; one node checked alone: "
          f"{result['one_node_alone_seconds_median']:.2f} s")
    c = result["one_node_cut"]
    print(f"one node cut ({c['node']}, --timeout {c['timeout']:g}): {c['seconds']:.2f} s vs {c['healthy_seconds_same_timeout']:.2f} s "
          f"healthy, +{c['added_seconds']:.2f} s ({'within' if c['within_timeout'] else 'OVER'} its timeout); "
          f"exit {c['exit']}, named: {c['named']}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
