#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Times of the region lab on this machine: a cold ``kontur lab up`` (empty
cache: debootstrap and the package repository are built), a warm one (cache
in place), and ``kontur lab down``, on the example region.

    sudo .venv/bin/python bench/lab_times.py [-i INVENTORY] [--keep-cache]

The cold run uses a temporary cache (``KONTUR_LAB_CACHE``) and a temporary lab
directory (``KONTUR_LAB_DIR``), so the machine's real cache and any lab state
are left alone; the temporary cache is removed at the end unless --keep-cache.
Needs root and the network this machine's apt uses.  Prints, never asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KONTUR = str(Path(sys.executable).parent / "kontur")


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    cp = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    dt = time.monotonic() - t0
    if cp.returncode != 0:
        sys.stderr.write(cp.stdout + cp.stderr)
        raise SystemExit(f"lab_times: {' '.join(argv[1:])} failed (exit {cp.returncode})")
    return dt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-i", "--inventory", default=str(REPO / "inventory" / "example" / "region.yaml"))
    p.add_argument("--keep-cache", action="store_true", help="keep the temporary cache (printed)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("lab_times: run as root (the lab needs it)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="kontur-lab-bench-", dir="/var/tmp"))
    env = {**os.environ, "KONTUR_LAB_CACHE": str(work / "cache"), "KONTUR_LAB_DIR": str(work / "lab")}
    up = [KONTUR, "lab", "up", "-i", args.inventory]
    down = [KONTUR, "lab", "down"]
    times: dict[str, float] = {}
    try:
        times["cold lab up (empty cache)"] = timed(up, env)
        times["lab down"] = timed(down, env)
        times["warm lab up (cache in place)"] = timed(up, env)
        times["lab down (again)"] = timed(down, env)
    finally:
        if (work / "lab" / "state.json").exists():
            subprocess.run(down, env=env, check=False)
        stamp = work / "cache" / "base-bookworm.json"
        base_seconds = json.loads(stamp.read_text()).get("seconds") if stamp.exists() else None
        sizes = subprocess.run(["du", "-sh", str(work / "cache" / "base-bookworm"), str(work / "cache" / "repo")],
                               capture_output=True, text=True, check=False).stdout.split("\n")
        if not args.keep_cache:
            from kontur.lab.fs import remove_tree
            remove_tree(work)      # refuses if anything below is still mounted

    print(f"kontur lab times: {Path(args.inventory).name}, {os.cpu_count()} CPUs")
    for what, dt in times.items():
        print(f"  {what:<32} {dt:7.1f} s")
    if base_seconds is not None:
        print(f"  {'  of which debootstrap':<32} {base_seconds:7.1f} s")
    for line in sizes:
        if line.strip():
            size, path = line.split(None, 1)
            print(f"  cache {Path(path).name:<26} {size:>7}")
    if args.keep_cache:
        print(f"  cache kept in {work / 'cache'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
