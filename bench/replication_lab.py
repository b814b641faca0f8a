#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Replication throughput in the region lab: kontur's plugin LAMI -> TsAMI
through nginx mutual TLS, beside DCMTK ``storescu`` sending the same shape of
study from the LAMI host straight to the TsAMI's DICOM port (issue 5).

    sudo .venv/bin/python bench/replication_lab.py [--ct 200x0.5] [--mg 8x12] [--reuse]

Runs on the replication test region (tests/data/replication-region.yaml) in a
lab of its own (``$KONTUR_LAB_DIR``, default /var/lib/kontur/lab-bench): brought
up and deployed with ``kontur deploy --lab``, brought down at the end (with
``--reuse``: a running, deployed lab of that region is used and left up).
The sending LAMI is ``path-lami`` (no bandwidth cap): each study is received
from its modality first, then timed from the push (``POST /kontur/replicate``,
urgent) until the TsAMI holds every instance and the plugin has verified.

For the baseline the TsAMI briefly accepts C-STORE from the LAMI host: one
nftables rule and one DICOM modality added at run time, removed afterwards.
Both paths run with TCP_NODELAY=1, alternately, ``--repeat`` times per shape.
Prints the medians: instances/s, MB/s and the ratio kontur / storescu.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KONTUR_LAB_DIR", "/var/lib/kontur/lab-bench")

from _figures import print_table, rate  # noqa: E402
from kontur import nodeapi  # noqa: E402
from kontur.inventory import load  # noqa: E402
from kontur.lab import ops  # noqa: E402
from kontur.lab.state import lab_region, load_state, ssh_command  # noqa: E402
from kontur.testing.dicom import make_study  # noqa: E402
from kontur.testing.orthanc import wait_for  # noqa: E402

REGION_FILE = REPO / "tests" / "data" / "replication-region.yaml"
TSAMI, LAMI, MODALITY = "repl-tsami", "path-lami", "KEM_DX1"
BENCH_AET, BENCH_MODALITY = "KONTUR_BENCH", "kontur-bench"


def shape(text: str) -> tuple[int, float]:
    n, mb = text.lower().split("x")
    return int(n), float(mb)


def on_host(state, node: str, command: str, timeout: float = 3600) -> str:
    p = subprocess.run(ssh_command(state, node, command), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{node}: {command}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return p.stdout


def kontur(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "kontur", *args], cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"kontur {' '.join(args)} failed:\n{(p.stdout + p.stderr)[-3000:]}")


def count(tsami: nodeapi.NodeClient) -> int:
    return int(tsami.get("statistics")["CountInstances"])


class DicomOpening:
    """The TsAMI accepts C-STORE from the LAMI host while this is open."""

    def __init__(self, state, tsami: nodeapi.NodeClient, lami_address: str, dicom_port: int):
        self.state, self.tsami, self.addr, self.port = state, tsami, lami_address, dicom_port
        self.handle: str | None = None

    def __enter__(self):
        out = on_host(self.state, TSAMI, f"nft --echo --handle insert rule inet kontur input ip saddr {self.addr} "
                                         f"tcp dport {self.port} accept")
        self.handle = out.strip().rsplit("# handle", 1)[1].split()[0]
        self.tsami.request("PUT", f"modalities/{BENCH_MODALITY}",
                           {"AET": BENCH_AET, "Host": self.addr, "Port": 104, "AllowStore": True,
                            "AllowEcho": True})
        return self

    def __exit__(self, *exc):
        try:
            self.tsami.request("DELETE", f"modalities/{BENCH_MODALITY}")
        finally:
            if self.handle:
                on_host(self.state, TSAMI, f"nft delete rule inet kontur input handle {self.handle}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default="200x0.5", help="CT-sized study: INSTANCESxMB (default 200x0.5)")
    ap.add_argument("--mg", default="8x12", help="MG-sized study: INSTANCESxMB (default 8x12)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per shape, alternating the paths; medians "
                                                          "are printed (default 3)")
    ap.add_argument("--reuse", action="store_true", help="use the running, deployed lab of the region; leave it up")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()

    region = load(REGION_FILE)
    brought_up = False
    work = Path(tempfile.mkdtemp(prefix="kontur-lab-bench-"))
    results: list[dict] = []
    try:
        state = load_state()
        if args.reuse:
            if state is None or state.region_name != region.region.name or state.status != "up":
                print(f"bench: --reuse needs a running lab of {REGION_FILE} in {os.environ['KONTUR_LAB_DIR']}",
                      file=sys.stderr)
                return 2
        else:
            t0 = time.perf_counter()
            state = ops.up(region, REGION_FILE, progress=lambda m: print(f"· {m}", file=sys.stderr))
            brought_up = True
            kontur("deploy", "--lab", "-i", str(REGION_FILE))
            print(f"· lab up and deployed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        lr = lab_region(region, state)
        tsami = nodeapi.client_for(region, TSAMI, lab=True)
        lami = nodeapi.client_for(region, LAMI, lab=True)
        tsami.timeout = lami.timeout = 600
        lami_root = Path(state.host(LAMI).rootfs)
        tsami_addr, dicom_port = lr.nodes[TSAMI].address, lr.ports(TSAMI).dicom

        for label, spec in (("CT", args.ct), ("MG", args.mg)):
            n, mb = shape(spec)
            runs: dict[str, list[float]] = {"scu": [], "sent": [], "verified": []}
            nbytes = 0
            for rep in range(max(1, args.repeat)):
                scu_study, k_study = (make_study(n, pixel_bytes=int(mb * 1e6), patient_name="Бенч^Тест")
                                      for _ in range(2))
                nbytes = k_study.nbytes

                # baseline: storescu on the LAMI host straight to the TsAMI's DICOM port
                rel = f"var/tmp/kontur-bench/{label}-{rep}"
                scu_study.write(lami_root / rel)
                base = count(tsami)
                with DicomOpening(state, tsami, state.host(LAMI).address, dicom_port):
                    out = on_host(state, LAMI, f"t0=$(date +%s.%N); TCP_NODELAY=1 storescu -aet {BENCH_AET} "
                                               f"-aec {lr.nodes[TSAMI].aet} +sd {tsami_addr} {dicom_port} /{rel} "
                                               "&& echo $t0 $(date +%s.%N)")
                    t_start, t_end = (float(x) for x in out.split()[-2:])
                if count(tsami) != base + n:
                    raise RuntimeError("storescu did not store every instance at the TsAMI")
                shutil.rmtree(lami_root / rel, ignore_errors=True)
                runs["scu"].append(t_end - t_start)

                # kontur: the LAMI receives the study from its modality, then forwards it when pushed
                d = work / f"{label}-{rep}"
                k_study.write(d)
                since = int(lami.get("changes?last")["Last"])
                sent = ops.send(MODALITY, [d])
                if not sent.ok or sent.stored != n:
                    raise RuntimeError(f"ingest into {LAMI} failed: {sent.stderr[-1000:]}")
                shutil.rmtree(d, ignore_errors=True)
                sid = k_study.orthanc_id()
                wait_for(lambda: any(c["ChangeType"] == "StableStudy" and c["ID"] == sid
                                     for c in lami.get(f"changes?since={since}&limit=10000")["Changes"]),
                         600, interval=0.5, message="the study to become stable at the LAMI")
                delivered0 = lami.replication_status()["counters"].get("deliveries_total", 0)
                base = count(tsami)
                t0 = time.perf_counter()
                lami.replicate(study=k_study.study_uid, urgent=True)
                wait_for(lambda: count(tsami) >= base + n, 3600, interval=0.05, message="the study at the TsAMI")
                runs["sent"].append(time.perf_counter() - t0)
                wait_for(lambda: lami.replication_status()["counters"].get("deliveries_total", 0) > delivered0,
                         600, interval=0.05, message="verification")
                runs["verified"].append(time.perf_counter() - t0)
            r_scu = rate(f"{label} storescu LAMI host -> TsAMI DICOM", n, nbytes, statistics.median(runs["scu"]))
            r_k = rate(f"{label} kontur LAMI -> TsAMI (nginx mTLS)", n, nbytes, statistics.median(runs["sent"]))
            r_kv = rate(f"{label} kontur, verified", n, nbytes, statistics.median(runs["verified"]))
            for r in (r_scu, r_k, r_kv):
                r["ratio_to_storescu"] = r["MB_per_s"] / r_scu["MB_per_s"]
                results.append(r)
            results[-3]["runs"] = runs
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if brought_up:
            ops.down(progress=lambda m: print(f"· {m}", file=sys.stderr))

    print(f"medians of {max(1, args.repeat)} run(s) per path")
    print_table(results, args.json, width=44)
    return 0


if __name__ == "__main__":
    sys.exit(main())
