#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""Results and notifications (issue 12), on loopback with real processes: a
LAMI Orthanc with kontur's plugin replicating to a TsAMI Orthanc, the HL7
service (Debian's python3, its state in SQLite as on a gateway, or in
PostgreSQL as on a LAMI with ``--postgresql``), and hl7apy's MLLP server as
the hospital's MIS.

    .venv/bin/python bench/hl7_results.py [--studies 20] [--notifications 300] [--postgresql]

* ORU to report attached: an ORU^R01 is sent for a stored study; the time
  until Orthanc lists the report (the Basic Text SR) in that study.
  Goal: within 2 s.
* delivered to MIS notified: the time from the study's delivery (its
  "delivered" event in the LAMI's outbox, written when the TsAMI verified
  it) to the MIS receiving the notification.  Goal: within 5 s.
* notification rate: that many notifications queued at once (studies
  archived: the plugin's events on the service's socket), the time until the
  MIS has acknowledged them all; notifications/s.

Every process is stopped by its PID at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kontur.testing.dicom import make_study  # noqa: E402
from kontur.testing.hl7 import REPORTS_AET, Hl7apyMis, Hl7Service, orm, oru, site_with_mis  # noqa: E402
from kontur.testing.orthanc import OrthancProcess, wait_for  # noqa: E402
from kontur.testing.postgres import PostgresProcess  # noqa: E402
from kontur.testing.replication import REFUSE_LUA, SCU_AET, new_node, tsami_config  # noqa: E402


class TimedMis(Hl7apyMis):
    """hl7apy's server, with the time each message arrived."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def received_at(self) -> list[tuple[float, str]]:
        n = len(self.messages)
        while len(self.times) < n:
            self.times.append(time.time())
        return list(zip(self.times, self.messages))


def _reports(o, sid: str) -> int:
    return sum(len(s["Instances"]) for s in o.get(f"/studies/{sid}/series")
               if s["MainDicomTags"].get("Modality") == "SR")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--notifications", type=int, default=300)
    ap.add_argument("--postgresql", action="store_true", help="the service's state in PostgreSQL (a LAMI)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kontur-bench-results-"))
    os.chmod(work, 0o711)
    processes: list = []
    pg = hl7 = mis = None
    try:
        if args.postgresql:
            pg = PostgresProcess(work / "pg").start()
        lua = work / "refuse.lua"
        lua.write_text(REFUSE_LUA)
        tsami = OrthancProcess("tsami", tsami_config(lua, work / "tsami-state"), work / "tsami", aet="TSAMI")
        processes.append(tsami)
        tsami.start()
        mis = TimedMis().start()
        site = site_with_mis(mis.port)
        modalities = {"DicomModalities": {
            "test-scu": {"AET": SCU_AET, "Host": "127.0.0.1", "Port": 11112, "AllowStore": True},
            "kontur-hl7": {"AET": REPORTS_AET, "Host": "127.0.0.1", "Port": 104, "AllowStore": True,
                           "AllowFind": True}}, "DicomAlwaysAllowFind": False}
        node = new_node(work / "lami", "lami", tsami.url, processes, stable_age=2, start=False,
                        extra_config=modalities)
        o = node.orthanc
        hl7 = Hl7Service(work / "hl7", site=site, events=True, postgres=pg,
                         reports={"host": "127.0.0.1", "port": o.dicom_port, "called_aet": o.aet},
                         notify={"viewer_url": "https://lami:443/kontur/view/{patient}/{accession}/{study}"})
        policy = node.policy
        policy["worklist"] = {"enabled": True, "db": hl7.database, "events_socket": hl7.events_socket}
        node.write_policy(policy)
        hl7.start()
        o.start()

        # ORU -> report attached, and delivery -> MIS notified, one study at a time
        attach, notified = [], []
        with hl7.client() as c:
            for i in range(args.studies):
                acc = f"BR{i:05d}"
                assert b"MSA|AA|" in c.send_message(orm(cid=f"O{i}", accession=acc, pid=f"P{i}"))
                uid = next(it["study_uid"] for it in hl7.items() if it["accession"] == acc)
                study = make_study(2, patient_id=f"P{i}", study_uid=uid)
                node.store(study)
                sid = study.orthanc_id()
                wait_for(lambda: sid in tsami.study_ids(), 120, message=f"study {i} at the TsAMI")
                t0 = time.perf_counter()
                assert b"MSA|AA|" in c.send_message(oru(cid=f"R{i}", accession=acc, pid=f"P{i}"))
                wait_for(lambda: _reports(o, sid) >= 1, 60, interval=0.02, message=f"report {i}")
                attach.append(time.perf_counter() - t0)
                # the delivered event's time (the LAMI's outbox) to the MIS's receipt of its notification
                ev = wait_for(lambda: [e for e in node_events(node) if e["study_uid"] == uid
                                       and e["kind"] == "delivered"], 60, message="the delivered event")[0]
                got = wait_for(lambda: [t for t, m in mis.received_at() if acc in m and "передано в ЦАМИ" in m],
                               60, interval=0.02, message=f"delivery {i} notified")
                notified.append(got[0] - ev["at"])

        # notification rate: that many "archived" events at once, as the plugin tells them
        n = args.notifications
        with hl7.client() as c:
            for i in range(n):
                assert b"MSA|AA|" in c.send_message(orm(cid=f"Q{i}", accession=f"BQ{i:05d}", pid=f"Q{i}"))
        uids = {it["accession"]: it["study_uid"] for it in hl7.items() if it["accession"].startswith("BQ")}
        before = len(mis.messages)
        t0 = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(hl7.events_socket)
            f = s.makefile("rwb")
            for i, acc in enumerate(sorted(uids)):
                f.write(json.dumps({"kind": "archived", "study_id": f"bench-{i}", "study_uid": uids[acc],
                                    "at": time.time()}).encode() + b"\n")
                f.flush()
                assert f.readline().strip() == b"ok"
        wait_for(lambda: len(mis.messages) - before >= n, 600, interval=0.05, message="every notification")
        rate = n / (time.perf_counter() - t0)
    finally:
        if hl7 is not None:
            hl7.remove()
        for p in reversed(processes):
            p.stop()
        if mis is not None:
            mis.stop()
        if pg is not None:
            pg.remove()
        shutil.rmtree(work, ignore_errors=True)
    attach.sort()
    notified.sort()
    state = "PostgreSQL" if args.postgresql else "SQLite"
    print(f"\nresults and notifications on loopback (the service's state in {state})")
    print("| measure | median | max | goal |")
    print("| --- | --- | --- | --- |")
    print(f"| ORU to report attached ({len(attach)} studies) | {statistics.median(attach) * 1000:.0f} ms | "
          f"{attach[-1] * 1000:.0f} ms | 2 s |")
    print(f"| delivered to MIS notified ({len(notified)}) | {statistics.median(notified) * 1000:.0f} ms | "
          f"{notified[-1] * 1000:.0f} ms | 5 s |")
    print(f"\nnotifications: {n} queued at once, {rate:.0f} per second acknowledged by the MIS")
    return 0


def node_events(node) -> list[dict]:
    """The LAMI outbox's study events (read-only)."""
    import sqlite3
    db = Path(node.policy["state_dir"]) / "replication.sqlite3"
    if not db.exists():
        return []
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    c.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in c.execute("SELECT * FROM events ORDER BY id")]
    finally:
        c.close()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
