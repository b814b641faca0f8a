#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Ingest with the transfer package's stage in the pipeline, beside the same
Orthanc without kontur's plugin, same files, same run (issue 10).

    .venv/bin/python bench/ingest.py [--instances 1000] [--kb 64] [--rounds 3]

Three Orthancs on loopback, one configuration but for the plugin:

* bare      -- no Python plugin
* callback  -- a Python script that only registers a received-instance
               callback answering "keep as is" (what the hook itself costs)
* modify    -- the same callback answering "modify" with the bytes it got
               (what Orthanc's handling of a changed instance costs)
* plugin    -- kontur's plugin, replication on, the transfer section off
* transfer  -- kontur's plugin with the ingest stage (text repair, Issuer of
               Patient ID stamped: every instance is rewritten) and validation
               (warn), as a LAMI of the example region runs it

Each receives the same files by C-STORE (DCMTK storescu, TCP_NODELAY=1, one
association) -- a mix of UTF-8 names and CP1251 names with no Specific
Character Set (``--legacy`` share) -- in alternating rounds, so that drift of
the machine hits all of them alike.  Printed: instances/s, ms per instance,
the ms added against bare, the ratio of rates (goal: under 2 ms added, ratio
at least 0.9) and the CPU time the Orthanc process spent per instance (less
noisy than the wall clock on a small machine).  ``--only plugin,transfer``
runs some of them (bare always).  Every Orthanc started is stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kontur.testing.dicom import make_instance, storescu, with_raw_text  # noqa: E402
from kontur.testing.orthanc import DICOMWEB_PLUGIN, OrthancProcess, wait_for  # noqa: E402
from kontur.testing.replication import SCU_AET, make_policy, node_config  # noqa: E402

TRANSFER = {"enabled": True, "repair_text": True, "issuer": __import__("os").environ.get("BENCH_ISSUER", "42-BENCH") or None,
            "validation": {"mode": "warn", "classifier": None}}


def files(directory: Path, n: int, kb: int, legacy: float, tag: str) -> list[Path]:
    directory.mkdir(parents=True)
    out = []
    n_legacy = int(n * legacy)
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.8.498.55.{tag}.{i // 50}"
        inst = make_instance(patient_id=f"B{tag}-{i // 50}", patient_name="Иванов^Пётр", study_uid=uid,
                             series_uid=uid + ".1", pixel_bytes=kb * 1024, instance_number=i + 1)
        data = inst.data
        if i < n_legacy:
            data = with_raw_text(data, {0x00100010: "Иванов^Пётр".encode("cp1251")}, charset=None)
        p = directory / f"{i:06d}.dcm"
        p.write_bytes(data)
        out.append(p)
    return out


def count(o: OrthancProcess) -> int:
    return o.statistics()["CountInstances"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads (from /proc)."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--kb", type=int, default=64, help="pixel data per instance, KiB")
    ap.add_argument("--legacy", type=float, default=0.5, help="share of instances with CP1251 names (0-1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated Orthancs to run (default: all five)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kontur-bench-ingest-") as tmp:
        tmp = Path(tmp)
        procs: dict[str, OrthancProcess] = {}
        try:
            bare = node_config(tmp / "none.json", stable_age=3600)      # the same keys, no Python plugin
            for key in ("Kontur", "PythonScript", "PythonVerbose"):
                bare.pop(key)
            bare["Plugins"] = [DICOMWEB_PLUGIN]
            procs["bare"] = OrthancProcess("bare", bare, tmp / "bare", aet="BARE")
            noop = tmp / "noop.py"
            noop.write_text("import orthanc\n"
                            "def cb(dicom, origin):\n"
                            "    return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None\n"
                            "orthanc.RegisterReceivedInstanceCallback(cb)\n")
            cfg = node_config(tmp / "none.json", stable_age=3600)
            cfg.pop("Kontur")
            cfg["PythonScript"] = str(noop)
            procs["callback"] = OrthancProcess("callback", cfg, tmp / "callback", aet="CALLBACK")
            same = tmp / "modify.py"
            same.write_text("import orthanc\n"
                            "def cb(dicom, origin):\n"
                            "    return orthanc.ReceivedInstanceAction.MODIFY, bytes(dicom)\n"
                            "orthanc.RegisterReceivedInstanceCallback(cb)\n")
            cfg = dict(cfg, PythonScript=str(same))
            procs["modify"] = OrthancProcess("modify", cfg, tmp / "modify", aet="MODIFY")
            for name, transfer in (("plugin", None), ("transfer", TRANSFER)):
                policy = make_policy("http://127.0.0.1:9/", tmp / name / "state", transfer=transfer)
                pp = tmp / f"{name}-policy.json"
                pp.write_text(json.dumps(policy))
                cfg = node_config(pp, stable_age=3600)
                procs[name] = OrthancProcess(name, cfg, tmp / name / "orthanc", aet=name.upper())
            if args.only:
                wanted = {w.strip() for w in args.only.split(",") if w.strip()}
                unknown = wanted - set(procs) - {"bare"}
                if unknown:
                    print(f"--only: unknown Orthanc(s) {sorted(unknown)}; expected some of {sorted(procs)}",
                          file=sys.stderr)
                    return 2
                procs = {k: v for k, v in procs.items() if k in wanted | {"bare"}}
            for o in procs.values():
                o.start()
            per: dict[str, list[float]] = {k: [] for k in procs}
            cpu: dict[str, list[float]] = {k: [] for k in procs}
            for r in range(args.rounds):
                batch = files(tmp / f"files-{r}", args.instances, args.kb, args.legacy, str(r))
                order = list(procs) if r % 2 == 0 else list(reversed(procs))
                for name in order:
                    o = procs[name]
                    before = count(o)
                    c0 = cpu_seconds(o.pid)
                    t0 = time.perf_counter()
                    storescu(batch, port=o.dicom_port, called_aet=o.aet, calling_aet=SCU_AET, timeout=3600)
                    wait_for(lambda: count(o) >= before + len(batch), 600, interval=0.02,
                             message=f"{len(batch)} instances at {name}")
                    per[name].append(time.perf_counter() - t0)
                    cpu[name].append(cpu_seconds(o.pid) - c0)
                    print(f"  round {r + 1}: {name:8} {per[name][-1]:7.2f} s, Orthanc CPU {cpu[name][-1]:6.2f} s",
                          flush=True)
            if "transfer" in procs and procs["transfer"].get("/kontur/quarantine")["summary"] is None:
                print("the transfer stage did not run", file=sys.stderr)
                return 1
        finally:
            for o in procs.values():
                o.stop()
    n = args.instances
    bare = statistics.median(per["bare"]) / n * 1000
    rows = []
    for name in procs:
        ms = statistics.median(per[name]) / n * 1000
        rows.append({"orthanc": name, "ms_per_instance": ms, "inst_per_s": 1000 / ms,
                     "added_ms": ms - bare, "ratio_to_bare": bare / ms,
                     "orthanc_cpu_ms": statistics.median(cpu[name]) / n * 1000})
    print(f"\ningest by C-STORE, {n} instances x {args.rounds} rounds, {args.kb} KiB pixel data, "
          f"{args.legacy:.0%} with CP1251 names (median round)")
    print(f"| {'Orthanc':10} | {'ms/instance':>11} | {'instances/s':>11} | {'added ms':>8} | {'rate / bare':>11} "
          f"| {'Orthanc CPU ms':>14} |")
    print(f"| {'-' * 10} | {'-' * 11} | {'-' * 11} | {'-' * 8} | {'-' * 11} | {'-' * 14} |")
    for r in rows:
        print(f"| {r['orthanc']:10} | {r['ms_per_instance']:11.2f} | {r['inst_per_s']:11.1f} | "
              f"{r['added_ms']:+8.2f} | {r['ratio_to_bare']:11.2f} | {r['orthanc_cpu_ms']:14.2f} |")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
