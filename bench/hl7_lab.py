#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""The HL7 service on a deployed node (issue 11): orders from the hospital's
MIS namespace to city-lami over the lab's network, and how soon the device
sees each on its worklist.

    sudo .venv/bin/python bench/hl7_lab.py [--orders 2000] [--latency 20] [--reuse]

Runs on the small test region (tests/data/small-region.yaml) in a lab of its
own (``$KONTUR_LAB_DIR``, default /var/lib/kontur/lab-bench), brought up and
deployed with ``kontur deploy --lab`` and brought down at the end (``--reuse``:
a running, deployed lab of that region is used and left up).

* throughput: ORM^O01 with their ACKs (python-hl7's MLLP client in the MIS's
  namespace; the service stores each durably before its ACK), one connection
  and four at once;
* order to worklist: an order is sent, then DCMTK ``findscu -W`` from the
  CT's namespace asks until the order is in the answer; the time from the
  send to that answer (a findscu run included).

Goals: at least 200 ORM/s; a new order on the worklist within 1 s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("KONTUR_LAB_DIR", "/var/lib/kontur/lab-bench")

from kontur.inventory import load  # noqa: E402
from kontur.lab import ops  # noqa: E402
from kontur.lab.state import lab_region, load_state  # noqa: E402

REGION_FILE = REPO / "tests" / "data" / "small-region.yaml"
HOSPITAL, NODE = "city", "city-lami"

SENDER = r"""
import json, sys, threading, time, hl7.client
host, port, n, conns, tag, facility, modality = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
from kontur.testing.hl7 import orm as _orm
def orm(i):
    return _orm(cid=f"{tag}-{i}", accession=f"B{tag}{i:07d}", pid=str(200000 + i), facility=facility, obr24=modality)
bad = []
def run(k):
    per = n // conns
    with hl7.client.MLLPClient(host, port) as c:
        for i in range(k * per, (k + 1) * per):
            if b"MSA|AA|" not in c.send_message(orm(i)):
                bad.append(i)
t0 = time.perf_counter()
ts = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"orders": (n // conns) * conns, "seconds": time.perf_counter() - t0, "refused": len(bad)}))
"""


def netns_python(netns: str, code: str, *args: str, timeout: float = 900) -> str:
    p = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args], capture_output=True,
                       text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"in {netns}: exit {p.returncode}: {p.stderr.strip()[-800:]}")
    return p.stdout


def findscu(netns: str, aet: str, called: str, address: str, port: int, out: Path) -> list[str]:
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    subprocess.run(["ip", "netns", "exec", netns, "findscu", "-W", "-aet", aet, "-aec", called, "-X", "-od", str(out),
                    "-k", "AccessionNumber", address, str(port)], capture_output=True, text=True, timeout=60,
                   env=dict(os.environ, TCP_NODELAY="1"))
    import pydicom
    return [str(pydicom.dcmread(f).AccessionNumber) for f in sorted(out.glob("rsp*.dcm"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=2000)
    ap.add_argument("--latency", type=int, default=20, help="orders timed to the worklist (default 20)")
    ap.add_argument("--reuse", action="store_true", help="use the running, deployed lab of the region; leave it up")
    args = ap.parse_args()
    region = load(REGION_FILE)
    brought_up = False
    work = Path(tempfile.mkdtemp(prefix="kontur-hl7-bench-"))
    try:
        state = load_state()
        if args.reuse:
            if state is None or state.region_name != region.region.name or state.status != "up":
                print(f"bench: --reuse needs a running lab of {REGION_FILE}", file=sys.stderr)
                return 2
        else:
            state = ops.up(region, REGION_FILE, progress=lambda m: print(f"· {m}", file=sys.stderr))
            brought_up = True
            p = subprocess.run([str(REPO / ".venv" / "bin" / "kontur"), "deploy", "--lab", "-i", str(REGION_FILE)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"deploy failed: {p.stdout[-1500:]}{p.stderr[-1500:]}")
        lr = lab_region(region, state)
        h = lr.hospitals[HOSPITAL]
        spec, ports = lr.nodes[NODE], lr.ports(NODE)
        mis_ns = state.mis[HOSPITAL].netns
        ct = next(m.aet for m in h.modalities if m.modality == "CT")
        ct_ns = state.modalities[ct].netns
        other = next(m.modality for m in h.modalities if m.modality != "CT")
        rows = []
        for conns in (1, 4):
            # to the hospital's other modality: the CT's worklist stays a day's size for the latency
            r = json.loads(netns_python(mis_ns, SENDER, spec.address, str(ports.hl7), str(args.orders), str(conns),
                                        f"t{conns}", h.mis.facility, other))
            if r["refused"]:
                raise RuntimeError(f"{r['refused']} orders refused")
            rows.append((conns, r["orders"] / r["seconds"]))
        # order to worklist: the CT's worklist now holds the throughput runs' orders; each new one is looked for
        out = work / "find"
        out.mkdir()
        waits = []
        for i in range(args.latency):
            t0 = time.perf_counter()
            netns_python(mis_ns, SENDER, spec.address, str(ports.hl7), "1", "1", f"L{i}", h.mis.facility, "CT")
            want = f"BL{i}0000000"
            while want not in findscu(ct_ns, ct, spec.aet, spec.address, ports.dicom, out):
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError(f"order {want} not on the worklist after 60 s")
            waits.append(time.perf_counter() - t0)
    finally:
        if brought_up:
            ops.down(progress=lambda m: print(f"· {m}", file=sys.stderr))
    print(f"\nthe HL7 service on {NODE} (lab, 2 cores), from the MIS's namespace over the lab bridge")
    print("| MLLP connections | ORM/s with ACK |")
    print("| --- | --- |")
    for conns, rate in rows:
        print(f"| {conns} | {rate:.0f} |")
    waits.sort()
    print(f"\norder to worklist ({len(waits)} orders, the CT's worklist growing to {len(waits)} items): "
          f"median {statistics.median(waits) * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms "
          f"(send with ACK + one findscu -W run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
