#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""De-identification throughput at the TsAMI beside plain forwarding of the
same study, same run (issue 16).

    .venv/bin/python bench/research.py [--instances 200] [--kb 64] [--rounds 3]

Two Orthancs on loopback: a "TsAMI" holding one CT study of ``--instances``
instances (identity planted in their headers, as in the tests' corpus) and a
"research" node.  Each round, in alternating order, with the research node
emptied before each path:

* forward -- every instance read from the TsAMI and sent on to the research
             node, the TsAMI's peer (the same transport the exporter uses)
* deid    -- ``python3 -m kontur_plugins.research export`` as the TsAMI runs
             it: Orthanc's /anonymize, the second pass, the leak scan, store

Both run under Debian's python3 and python3-pydicom, as on a node.  Printed:
instances/s of each (median of the rounds) and the ratio deid/forward.
Every Orthanc started is stopped by PID.
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

from kontur.testing.dicom import make_instance  # noqa: E402
from kontur.testing.orthanc import OrthancProcess  # noqa: E402

NODE_PYTHON = "/usr/bin/python3"
FORWARD = """
import json, sys
from kontur_plugins.research.rest import OrthancArchive, endpoint_from
src = OrthancArchive(endpoint_from(json.load(open(sys.argv[1]))["archive"]))
for study in src.studies():
    for i in src.study_instances(study):
        src.store_at_peer("research", src.file(i))
"""
POLICY = {"research": {"region_code": "42", "hospitals": {"42-BENCH": "bench"}, "feeds": {"bench": {
    "destination": "research", "select": {"modalities": ["CT"]},
    "profile": {"options": ["retain_modified_dates", "clean_descriptors"]}}}}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--kb", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kontur-bench-research-") as tmp:
        d = Path(tmp)
        cfg = {"DefaultEncoding": "Utf8"}
        with OrthancProcess("research", cfg, d / "research") as research, OrthancProcess("tsami", {**cfg, "OrthancPeers": {
                "research": {"Url": research.url + "/", "Username": research.username,
                             "Password": research.password}}}, d / "tsami") as tsami:
            uid = "1.2.826.0.1.3680043.8.498.91.1"
            for n in range(args.instances):
                inst = make_instance(patient_id="42-BENCH:7001", patient_name="Иванов^Пётр^Сергеевич",
                                     study_uid=uid, series_uid=uid + ".1", pixel_bytes=args.kb * 1024,
                                     instance_number=n + 1, accession="ACC7001",
                                     study_description="КТ груди Иванов")
                tsami.upload(inst.data)
            ep = d / "research.json"
            ep.write_text(json.dumps({"archive": {"url": tsami.url, "username": tsami.username,
                                                  "password": tsami.password}, "key": os.urandom(32).hex()}))
            ep.chmod(0o600)
            (d / "policy.json").write_text(json.dumps(POLICY))
            env = dict(os.environ, PYTHONPATH=str(REPO / "plugins"))
            cmds = {
                "forward": [NODE_PYTHON, "-c", FORWARD, str(ep)],
                "deid": [NODE_PYTHON, "-m", "kontur_plugins.research", "export", "--policy", str(d / "policy.json"),
                         "--secrets", str(ep), "--keymap", str(d / "keymap.sqlite"), "bench"],
            }
            times: dict[str, list[float]] = {k: [] for k in cmds}
            for r in range(args.rounds):
                for name in (list(cmds) if r % 2 == 0 else list(reversed(cmds))):
                    for s in research.get("/studies"):
                        research.delete(f"/studies/{s}")
                    (d / "keymap.sqlite").unlink(missing_ok=True)       # a fresh map: every instance is sent
                    t0 = time.perf_counter()
                    p = subprocess.run(cmds[name], env=env, capture_output=True, text=True)
                    times[name].append(time.perf_counter() - t0)
                    if p.returncode != 0:
                        print(f"{name} failed (exit {p.returncode}): {p.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    held = research.statistics()["CountInstances"]
                    if held != args.instances:
                        print(f"{name}: the research node holds {held} of {args.instances}", file=sys.stderr)
                        return 1
    rates = {k: args.instances / statistics.median(v) for k, v in times.items()}
    print(f"{'path':10} {'inst/s':>8}   (median of {args.rounds} rounds, {args.instances} x {args.kb} KB CT)")
    for k, v in rates.items():
        print(f"{k:10} {v:8.1f}")
    print(f"ratio deid/forward: {rates['deid'] / rates['forward']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
