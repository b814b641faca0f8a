"""Issue 14: on an 80-column terminal no table cuts an address, an AE title or a
node name ("…", or folded over two lines); long free text wraps instead.  Each
table is rendered with rich at width 80 on the example region's data."""
from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.text import Text

from kontur import health
from kontur.cli import main, names_in
from kontur.inventory import load
from kontur.render import render_node
from kontur.secrets import SecretStore


@pytest.fixture(scope="module")
def region():
    return load()


def render(*tables, width: int = 80) -> list[str]:
    buf = io.StringIO()
    console = Console(file=buf, width=width, highlight=False, color_system=None)
    for t in tables:
        console.print(t)
    return buf.getvalue().splitlines()


def assert_whole(lines: list[str], wanted, width: int = 80):
    assert "…" not in "\n".join(lines)
    assert max(Text(ln).cell_len for ln in lines) <= width
    missing = sorted(w for w in wanted if not any(w in ln for ln in lines))
    assert not missing, "\n".join(["cut or missing: " + ", ".join(missing), *lines])


def in_rows(rows: list[list[str]], names) -> set[str]:
    """The names that occur in the table's cells (each must then be drawn whole)."""
    return {n for n in names if any(n in cell for row in rows for cell in row)}


def test_show(region):
    from kontur.cli.core import summary_tables
    lines = render(*summary_tables(region))
    wanted = set(region.nodes) | {s.address for s in region.nodes.values()} | {
        s.aet for s in region.nodes.values() if s.aet}
    for h in region.hospitals.values():
        wanted |= {m.aet for m in h.modalities} | {f"{m.host}:{m.port}" for m in h.modalities}
    assert_whole(lines, wanted)


def test_check(region, tmp_path):
    from kontur.cli.check import _table
    store = SecretStore(tmp_path / "secrets")
    results, rows = [], []
    for n, spec in region.nodes.items():
        bundle = render_node(region, n, store)
        r = health.judge(region, n, bundle, None,
                         ssh_error=f"no answer within 20 s (ssh root@{spec.address}:{region.ports(n).ssh})",
                         https_error=f"[Errno 111] Connection refused https://{spec.address}:"
                                     f"{region.ports(n).https}/")
        if spec.aet:        # and a finding naming an AE title at its address
            r.findings.append(health.Finding(health.RED, "dicom", f"C-ECHO to {spec.aet} at "
                                             f"{spec.address}:{region.ports(n).dicom} failed: Connection refused"))
        for _, m in region.dicom_senders(n):          # a device's AE title as the subject
            r.findings.append(health.Finding(health.YELLOW, m.aet, f"{m.aet} at {m.host}:{m.port} silent: "
                                             f"last study 20 h ago; its usual rhythm allows 12 h"))
        results.append(r)
    rows = [list(row.values()) for row in health.rows(results)]
    lines = render(_table(results, region, 1.2))
    wanted = in_rows(rows, names_in(region) | {f"root@{s.address}:{region.ports(n).ssh})"
                                               for n, s in region.nodes.items()}
                     | {f"https://{s.address}:{region.ports(n).https}/" for n, s in region.nodes.items()})
    assert {"tsami", region.nodes["tsami"].address, region.nodes["tsami"].aet} <= wanted
    assert_whole(lines, wanted)


def test_replication_status(region):
    from kontur.replication_cli import replicating_nodes, status_tables
    rows = []
    for i, n in enumerate(replicating_nodes(region)):
        if i % 2:
            rows.append({"node": n, "reachable": False, "status": None,
                         "error": f"{n}: unreachable at https://{region.nodes[n].address}:443/: timed out"})
        else:
            rows.append({"node": n, "reachable": True, "error": None, "status": {
                "enabled": True, "policy": "all", "queue_depth": 12345, "oldest_pending_age_seconds": 7300,
                "in_flight": {"instances_sent": 120, "instances_total": 4000, "urgent": True}, "delivered": 987654,
                "failed": 3, "parked": 1, "window_open": False, "seconds_until_window": 5000,
                "last_error": {"message": "POST /kontur/receive at the TsAMI answered HTTP 503: "
                                          "the receiver is busy, retried with backoff"}}})
    lines = render(*status_tables(region, rows, 80))
    # node names, and no count or state folded either ("98765" over "4")
    assert_whole(lines, set(replicating_nodes(region)) | {"12345", "987654", "120/4000 urgent", "in 83 min",
                                                          "unreachable"})
    wide = status_tables(region, rows, 160)
    assert len(wide) == 1 and len(status_tables(region, rows, 80)) == 2      # one table where it fits
    assert_whole(render(*wide, width=160), set(replicating_nodes(region)) | {"987654", "in 83 min"}, width=160)


def test_lab_status(region, monkeypatch):
    from kontur.lab import cli as lab_cli
    from kontur.lab import ops
    lab = {a: f"10.99.{i // 250}.{i % 250 + 2}" for i, a in enumerate(region.all_addresses())}
    st = ops.Status(region.region.name, "up", [
        ops.HostStatus(n, s.role.value, lab[s.address], s.address, "up", True, "running")
        for n, s in region.nodes.items()])
    for h_name, h in region.hospitals.items():
        for m in h.modalities:
            st.modalities.append({"aet": m.aet, "hospital": h_name, "modality": m.modality,
                                  "address": lab[m.host], "inventory_address": m.host,
                                  "netns": f"kl-m-{m.aet.lower()}", "present": False,
                                  "node": h.node or "tsami"})
        if h.mis:
            st.mis.append({"hospital": h_name, "address": lab[h.mis.host], "port": h.mis.port,
                           "inventory_address": h.mis.host, "netns": "kl-mis", "running": True, "messages": 3})
    assert st.modalities
    monkeypatch.setattr(ops, "status", lambda: st)
    buf = io.StringIO()
    monkeypatch.setattr(lab_cli, "out", Console(file=buf, width=80, highlight=False, color_system=None))
    assert main(["lab", "status"]) == 0
    lines = buf.getvalue().splitlines()
    wanted = set(region.nodes) | set(lab.values()) | set(region.all_addresses()) | {
        m["aet"] for m in st.modalities} | {f"{m['address']}:{m['port']}" for m in st.mis}
    assert_whole(lines, wanted)
