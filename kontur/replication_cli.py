"""``kontur replicate`` and ``kontur replication status``: the operator's side
of hybrid replication (issue 5).

Both talk to the nodes' REST API (routes served by kontur's Orthanc plugin)
through :mod:`kontur.nodeapi`.
"""
from __future__ import annotations

import json

import click
from rich.table import Table

from . import nodeapi
from .cli import CONTEXT, err, inventory_option, load_region, out
from .errors import InvalidInput, OperationFailed
from .model import Region, Role

REPLICATING = (Role.LAMI, Role.GATEWAY)


def replicating_nodes(region: Region) -> list[str]:
    return [n for n, spec in region.nodes.items() if spec.role in REPLICATING]


def _check_node(region: Region, node: str) -> None:
    if node not in region.nodes:
        raise InvalidInput(f"--node {node!r} is not in the inventory; replicating nodes: "
                           f"{', '.join(replicating_nodes(region))}")
    if region.nodes[node].role not in REPLICATING:
        raise InvalidInput(f"--node {node!r} is a {region.nodes[node].role.value}; only LAMI and gateway nodes "
                           f"replicate: {', '.join(replicating_nodes(region))}")


def _age(seconds) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


@click.command("replicate", context_settings=CONTEXT)
@click.option("--study", metavar="UID", help="StudyInstanceUID (or Orthanc study ID) to push to the TsAMI.")
@click.option("--patient", metavar="ID", help="PatientID: push all of this patient's studies.")
@click.option("--urgent", is_flag=True, help="Send at once, ahead of the queue, whatever the transfer window.")
@click.option("--node", metavar="NODE", help="The LAMI or gateway holding the study (default: ask every one).")
@click.option("--lab", is_flag=True,
              help="Talk to the nodes of the running region lab (kontur lab up, kontur deploy --lab).")
@inventory_option
def replicate_command(study, patient, urgent, node, lab, inventory):
    """Push one study, or all studies of one patient, to the TsAMI now.

    Works under every policy (all, pathology, on-demand); a study the TsAMI
    refused before (parked) gets another try.  Without --node every LAMI and
    gateway is asked and the study goes from wherever it is held.

    Exit codes: 0 queued, 1 not found on any node or a node failed, 2 invalid input.
    """
    if (study is None) == (patient is None):
        raise InvalidInput("give exactly one of --study UID or --patient ID")
    region = load_region(inventory)
    if node:
        _check_node(region, node)
        targets = [node]
    else:
        targets = replicating_nodes(region)
    what = f"study {study}" if study else f"patient {patient}"
    queued: list[tuple[str, dict]] = []
    problems: list[str] = []
    for n in targets:
        client = nodeapi.client_for(region, n, lab=lab)
        try:
            answer = client.replicate(study=study, patient=patient, urgent=urgent)
        except nodeapi.NodeError as exc:
            if exc.status == 404 and "not in this archive" in str((exc.body or {}).get("error", "")
                                                                  if isinstance(exc.body, dict) else ""):
                continue                      # not held there
            problems.append(str(exc))
            continue
        for q in answer.get("queued", []):
            queued.append((n, q))
    for p in problems:
        err.print(f"kontur: {p}", markup=False)
    if not queued:
        where = node or "any LAMI or gateway"
        if problems:
            raise OperationFailed(f"{what} was not queued: {len(problems)} node(s) could not be asked")
        raise OperationFailed(f"{what} is not held by {where}")
    table = Table(title=f"queued for the TsAMI{' (urgent)' if urgent else ''}", title_justify="left")
    for col in ("node", "study", "StudyInstanceUID", "patient", "state"):
        table.add_column(col)
    for n, q in queued:
        table.add_row(n, q.get("study", "?"), q.get("study_uid") or "—", q.get("patient_id") or "—",
                      q.get("state", "?"))
    out.print(table)
    if problems and not node:
        raise OperationFailed(f"{what} queued on {len(set(n for n, _ in queued))} node(s), "
                              f"but {len(problems)} node(s) could not be asked")


def collect_status(region: Region, lab: bool = False) -> list[dict]:
    rows = []
    for n in replicating_nodes(region):
        row: dict = {"node": n, "reachable": False, "error": None, "status": None}
        try:
            row["status"] = nodeapi.client_for(region, n, lab=lab).replication_status()
            row["reachable"] = True
        except nodeapi.NodeError as exc:
            row["error"] = str(exc)
        except InvalidInput as exc:
            row["error"] = exc.message
        rows.append(row)
    return rows


def problems_of(row: dict) -> list[str]:
    if not row["reachable"]:
        return [row["error"] or "unreachable"]
    st = row["status"] or {}
    if not st.get("enabled"):
        return [f"replication disabled: {st.get('reason')}"]
    out_ = []
    if st.get("parked"):
        out_.append(f"{st['parked']} parked")
    if st.get("failed"):
        out_.append(f"{st['failed']} failing")
    if st.get("overdue"):
        out_.append(f"{st['overdue']} overdue")
    return out_


@click.group("replication", context_settings=CONTEXT)
def replication_group():
    """Hybrid replication LAMI/gateway -> TsAMI: see where every node stands."""


@replication_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per node) instead of a table.")
@click.option("--lab", is_flag=True,
              help="Ask the nodes of the running region lab (kontur lab up, kontur deploy --lab).")
@inventory_option
def status_command(as_json, lab, inventory):
    """One table for the whole region: policy, queue, oldest pending, in flight,
    delivered, failed, parked and the last error of every LAMI and gateway.

    Exit codes: 0 all replicating cleanly; 1 a node is unreachable, disabled,
    or has parked, failing or overdue studies; 2 invalid input.
    """
    region = load_region(inventory)
    rows = collect_status(region, lab=lab)
    bad = {r["node"]: problems_of(r) for r in rows if problems_of(r)}
    if as_json:
        out.print_json(json.dumps([{**r, "problems": problems_of(r)} for r in rows], ensure_ascii=False))
    else:
        table = Table(title=f"{region.region.title} — replication to the TsAMI", title_justify="left")
        for col in ("node", "policy", "queue", "oldest pending", "in flight", "delivered", "failed", "parked",
                    "window", "last error"):
            table.add_column(col)
        for r in rows:
            st = r["status"]
            if not r["reachable"]:
                table.add_row(r["node"], "?", "?", "?", "?", "?", "?", "?", "?", f"[red]{r['error']}[/red]")
                continue
            if not st.get("enabled"):
                table.add_row(r["node"], "disabled", "—", "—", "—", "—", "—", "—", "—",
                              f"[red]{st.get('reason')}[/red]")
                continue
            flight = st.get("in_flight")
            flight_s = "—"
            if flight:
                total = flight.get("instances_total")
                flight_s = f"{flight.get('instances_sent', 0)}/{total if total is not None else '?'}" + (
                    " urgent" if flight.get("urgent") else "")
            last = st.get("last_error") or {}
            window = "open" if st.get("window_open") else f"in {_age(st.get('seconds_until_window'))}"
            table.add_row(r["node"], st.get("policy", "?"), str(st.get("queue_depth", 0)),
                          _age(st.get("oldest_pending_age_seconds")), flight_s, str(st.get("delivered", 0)),
                          str(st.get("failed", 0)), str(st.get("parked", 0)), window,
                          (last.get("message") or "—")[:80])
        out.print(table)
    if bad:
        if not as_json:
            for node, probs in bad.items():
                err.print(f"kontur: {node}: {'; '.join(probs)}", markup=False)
        raise OperationFailed(f"{len(bad)} of {len(rows)} replicating node(s) need attention")
