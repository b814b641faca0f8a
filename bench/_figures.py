# SPDX-License-Identifier: AGPL-3.0-or-later
"""Throughput figures the replication benches share: one measured path as a
dict, and the table they print (plus JSON on request)."""
from __future__ import annotations

import json


def rate(label: str, n: int, nbytes: int, seconds: float) -> dict:
    return {"path": label, "instances": n, "MB": nbytes / 1e6, "seconds": seconds,
            "inst_per_s": n / seconds, "MB_per_s": nbytes / 1e6 / seconds}


def print_table(results: list[dict], as_json: bool = False, width: int = 44) -> None:
    """One row per path; the ratio column is to storescu (or to a single study
    for a backlog); rows without a rate are latencies added by the plugin."""
    print(f"{'path':{width}} {'inst':>6} {'MB':>8} {'s':>7} {'inst/s':>8} {'MB/s':>8} {'ratio':>6}")
    for r in results:
        if "inst_per_s" in r:
            ratio = r.get("ratio_to_storescu", r.get("ratio_to_single"))
            print(f"{r['path']:{width}} {r['instances']:6d} {r['MB']:8.1f} {r['seconds']:7.2f} "
                  f"{r['inst_per_s']:8.1f} {r['MB_per_s']:8.1f} {'' if ratio is None else f'{ratio:6.2f}'}")
        else:
            print(f"{r['path']:{width}} with plugin {r['with_plugin']:.2f} ms, without {r['without_plugin']:.2f} ms, "
                  f"added {r['added_ms']:+.2f} ms")
    if as_json:
        print(json.dumps(results, indent=2))
