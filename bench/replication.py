#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Forwarding throughput of kontur's replication plugin, beside baselines
measured in the same run on this machine (issue 5).

    .venv/bin/python bench/replication.py [--ct 200x0.5] [--mg 8x12] [--backlog 50x10x0.2]

For each shape (CT-sized: many 0.5 MB instances; MG-sized: few large ones):

* storescu  -- DCMTK ``storescu`` sending the files straight to the TsAMI
* peers     -- bare Orthanc forwarding (``/peers/tsami/store``, synchronous)
* kontur    -- the plugin forwarding LAMI -> TsAMI (POST /kontur/replicate,
               until the TsAMI holds every instance and the plugin has verified)

and prints instances/s, MB/s and the ratio kontur / storescu.  It also
measures ingest into a LAMI with the plugin against one without (ms per
instance) and a backlog of many studies draining, against the single-study
rate.  Everything runs on loopback with TCP_NODELAY=1; every Orthanc started
is stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _figures import print_table, rate  # noqa: E402
from kontur.testing.dicom import make_study, storescu  # noqa: E402
from kontur.testing.orthanc import DICOMWEB_PLUGIN, OrthancProcess, wait_for  # noqa: E402
from kontur.testing.replication import (  # noqa: E402
    PEER_PASSWORD,
    PEER_USER,
    SCU_AET,
    make_policy,
    node_config,
)


def shape(text: str) -> tuple[int, float]:
    n, mb = text.lower().split("x")
    return int(n), float(mb)


def count(o: OrthancProcess) -> int:
    return o.statistics()["CountInstances"]


def wait_count(o: OrthancProcess, n: int, timeout: float = 1800) -> None:
    wait_for(lambda: count(o) >= n, timeout, interval=0.02, message=f"{n} instances at {o.name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default="200x0.5", help="CT-sized study: INSTANCESxMB (default 200x0.5)")
    ap.add_argument("--mg", default="8x12", help="MG-sized study: INSTANCESxMB (default 8x12)")
    ap.add_argument("--backlog", default="50x10x0.2", help="backlog: STUDIESxINSTANCESxMB (default 50x10x0.2)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kontur-bench-"))
    procs: list[OrthancProcess] = []
    results: list[dict] = []
    try:
        tsami = OrthancProcess("tsami", {"Plugins": [DICOMWEB_PLUGIN], "RegisteredUsers": {PEER_USER: PEER_PASSWORD},
                                         "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False},
                               work / "tsami", aet="TSAMI")
        procs.append(tsami)
        tsami.start()
        policy_path = work / "policy.json"
        policy = make_policy(tsami.url, work / "state", mode="on-demand",
                             tuning={"full_pass_first_delay_seconds": 86400})
        policy_path.write_text(json.dumps(policy))
        cfg = node_config(policy_path, stable_age=2)
        cfg["OrthancPeers"] = {"tsami": {"Url": tsami.url, "Username": PEER_USER, "Password": PEER_PASSWORD}}
        lami = OrthancProcess("lami", cfg, work / "lami", aet="LAMI")
        procs.append(lami)
        lami.start()
        plain_cfg = {k: v for k, v in cfg.items() if k not in ("PythonScript", "Kontur")}
        plain_cfg["Plugins"] = [DICOMWEB_PLUGIN]
        plain = OrthancProcess("plain", plain_cfg, work / "plain", aet="PLAIN")
        procs.append(plain)
        plain.start()

        for label, spec in (("CT", args.ct), ("MG", args.mg)):
            n, mb = shape(spec)
            studies = [make_study(n, pixel_bytes=int(mb * 1e6), patient_name="Бенч^Тест") for _ in range(3)]
            dirs = [s.write(work / f"{label}-{i}") for i, s in enumerate(studies)]
            nbytes = studies[0].nbytes
            # baseline: storescu straight to the TsAMI
            base = count(tsami)
            t0 = time.perf_counter()
            storescu(dirs[0], port=tsami.dicom_port, called_aet="TSAMI", calling_aet=SCU_AET, timeout=3600)
            wait_count(tsami, base + n)
            r_scu = rate(f"{label} storescu -> TsAMI", n, nbytes, time.perf_counter() - t0)
            # ingest into the LAMI with the plugin vs a plain Orthanc (ms per instance)
            t0 = time.perf_counter()
            storescu(dirs[1] + dirs[2], port=lami.dicom_port, called_aet="LAMI", calling_aet=SCU_AET, timeout=3600)
            ingest_plugin = (time.perf_counter() - t0) / (2 * n) * 1000
            t0 = time.perf_counter()
            storescu(dirs[1] + dirs[2], port=plain.dicom_port, called_aet="PLAIN", calling_aet=SCU_AET,
                     timeout=3600)
            ingest_plain = (time.perf_counter() - t0) / (2 * n) * 1000
            time.sleep(3)                       # let both studies become stable at the LAMI
            # bare Orthanc forwarding
            base = count(tsami)
            t0 = time.perf_counter()
            lami.post("/peers/tsami/store", {"Resources": [studies[1].orthanc_id()], "Synchronous": True},
                      timeout=3600)
            wait_count(tsami, base + n)
            r_peer = rate(f"{label} Orthanc peers/store", n, nbytes, time.perf_counter() - t0)
            # kontur's plugin
            base = count(tsami)
            delivered0 = lami.get("/kontur/replication")["counters"].get("deliveries_total", 0)
            t0 = time.perf_counter()
            lami.post("/kontur/replicate", {"study": studies[2].orthanc_id(), "urgent": True})
            wait_count(tsami, base + n)
            t_sent = time.perf_counter() - t0
            wait_for(lambda: lami.get("/kontur/replication")["counters"].get("deliveries_total", 0) > delivered0,
                     600, interval=0.02, message="verification")
            t_verified = time.perf_counter() - t0
            r_k = rate(f"{label} kontur plugin", n, nbytes, t_sent)
            r_kv = rate(f"{label} kontur plugin (verified)", n, nbytes, t_verified)
            for r in (r_scu, r_peer, r_k, r_kv):
                r["ratio_to_storescu"] = r["MB_per_s"] / r_scu["MB_per_s"]
                results.append(r)
            results.append({"path": f"{label} ingest ms/instance", "with_plugin": ingest_plugin,
                            "without_plugin": ingest_plain, "added_ms": ingest_plugin - ingest_plain})

        # backlog: many studies queued at once, drained in order
        ns, ni, mb = args.backlog.lower().split("x")
        ns, ni, mb = int(ns), int(ni), float(mb)
        backlog = [make_study(ni, pixel_bytes=int(mb * 1e6)) for _ in range(ns)]
        paths = [p for i, s in enumerate(backlog) for p in s.write(work / f"backlog-{i}")]
        storescu(paths, port=lami.dicom_port, called_aet="LAMI", calling_aet=SCU_AET, timeout=3600)
        time.sleep(3)
        single = backlog[0]
        base = count(tsami)
        t0 = time.perf_counter()
        lami.post("/kontur/replicate", {"study": single.orthanc_id()})
        wait_count(tsami, base + ni)
        r_single = rate("backlog: one study alone", ni, single.nbytes, time.perf_counter() - t0)
        rest = backlog[1:]
        base = count(tsami)
        t0 = time.perf_counter()
        for s in rest:
            lami.post("/kontur/replicate", {"study": s.orthanc_id()})
        wait_count(tsami, base + ni * len(rest))
        r_backlog = rate(f"backlog: {len(rest)} studies queued", ni * len(rest), sum(s.nbytes for s in rest),
                         time.perf_counter() - t0)
        r_backlog["ratio_to_single"] = r_backlog["MB_per_s"] / r_single["MB_per_s"]
        results += [r_single, r_backlog]
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_table(results, args.json, width=42)
    return 0


if __name__ == "__main__":
    sys.exit(main())
