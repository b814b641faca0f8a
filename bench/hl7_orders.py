#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""HL7 throughput of kontur's HL7 service (issue 11): new orders (ORM^O01),
each answered with its ACK after it is stored durably, over one MLLP
connection and over several at once.

    .venv/bin/python bench/hl7_orders.py [--orders 2000] [--connections 4]

The service runs as on a node (Debian's python3 and python3-hl7) on
loopback, its state where a node keeps it: SQLite (synchronous=FULL: one
fsync per message, as on a gateway) and a PostgreSQL 15 server on this
machine (fsync on, as on a LAMI).  The MIS side is python-hl7's MLLP client.  Printed:
orders/s with ACK, the median and 95th percentile of a message's round trip.
Goal: at least 200 ORM/s.  The service is stopped by PID.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import hl7.client

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kontur.testing.hl7 import Hl7Service  # noqa: E402
from kontur.testing.hl7 import orm as _orm  # noqa: E402
from kontur.testing.postgres import PostgresProcess  # noqa: E402


def orm(n: int, tag: str) -> str:
    return _orm(cid=f"{tag}-{n}", accession=f"A{tag}{n:07d}", pid=str(100000 + n))


def run(port: int, orders: int, connections: int, tag: str) -> tuple[float, list[float]]:
    per = orders // connections
    rtts: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []

    def client(k: int) -> None:
        mine = []
        with hl7.client.MLLPClient("127.0.0.1", port) as c:
            for i in range(per):
                t = time.perf_counter()
                answer = c.send_message(orm(k * per + i, tag))
                mine.append(time.perf_counter() - t)
                if b"MSA|AA|" not in answer:
                    failures.append(answer.decode("utf-8", "replace"))
        with lock:
            rtts.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if failures:
        raise SystemExit(f"{len(failures)} orders not accepted, first: {failures[0]!r}")
    return per * connections / elapsed, rtts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kontur-bench-hl7-") as tmp:
        where = Path(tmp)
        os.chmod(where, 0o711)                      # PostgreSQL runs as its own user
        pg = PostgresProcess(where / "pg").start()  # durable: fsync and synchronous_commit on
        try:
            for label, kw in (("SQLite (a gateway)", {}), ("PostgreSQL (a LAMI)", {"postgres": pg})):
                # as on a node: Debian's python3, python3-hl7 (and python3-psycopg2)
                service = Hl7Service(where / label.split()[0].lower(), **kw)
                service.start()
                try:
                    for conns, tag in ((1, "s"), (args.connections, "p")):
                        rate, rtts = run(service.port, args.orders, conns, tag)
                        rtts.sort()
                        rows.append((label, conns, rate, statistics.median(rtts) * 1000,
                                     rtts[int(len(rtts) * 0.95)] * 1000))
                finally:
                    service.stop()
        finally:
            pg.remove()
    print(f"\nORM^O01 with ACK, {args.orders} orders per run, each committed durably before its ACK")
    print("| state | connections | orders/s | round trip median ms | p95 ms |")
    print("| --- | --- | --- | --- | --- |")
    for label, conns, rate, med, p95 in rows:
        print(f"| {label} | {conns} | {rate:.0f} | {med:.2f} | {p95:.2f} |")
    return 0

if __name__ == "__main__":
    sys.exit(main())
