"""``kontur replicate`` and ``kontur replication status``: the operator's side
of hybrid replication (issue 5).

Both talk to the nodes' REST API (routes served by kontur's Orthanc plugin)
through :mod:`kontur.nodeapi`.
"""
from __future__ import annotations

import concurrent.futures
import json

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import nodeapi
from .cli import CONTEXT, err, inventory_option, load_region, out, whole
from .errors import InvalidInput, KonturError, OperationFailed
from .model import Region, Role
from .progress import Board

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


def _targets(region: Region, node: str | None, hospital: str | None) -> list[str]:
    if node:
        _check_node(region, node)
        return [node]
    if hospital:
        if hospital not in region.hospitals:
            raise InvalidInput(f"--hospital {hospital!r} is not in the inventory; known: "
                               f"{', '.join(sorted(region.hospitals))}")
        nodes = [n for n in replicating_nodes(region) if region.hospital_of(n) == hospital]
        if not nodes:
            raise InvalidInput(f"hospital {hospital!r} has no LAMI or gateway of its own")
        return nodes
    return replicating_nodes(region)


@click.command("replicate", context_settings=CONTEXT)
@click.option("--study", metavar="UID", help="StudyInstanceUID (or Orthanc study ID) to push to the TsAMI.")
@click.option("--patient", metavar="ID", help="PatientID: push all of this patient's studies.")
@click.option("--release-parked", is_flag=True,
              help="Give every study the TsAMI refused (parked) another try, after the cause was fixed.")
@click.option("--reason", metavar="TEXT", help="With --release-parked: why (kept in the node's audit trail).")
@click.option("--urgent", is_flag=True, help="Send at once, ahead of the queue, whatever the transfer window.")
@click.option("--node", metavar="NODE", help="The LAMI or gateway holding the study (default: ask every one).")
@click.option("--hospital", metavar="H", help="Only the LAMI or gateway of this hospital.")
@click.option("--lab", is_flag=True,
              help="Talk to the nodes of the running region lab (kontur lab up, kontur deploy --lab).")
@inventory_option
def replicate_command(study, patient, release_parked, reason, urgent, node, hospital, lab, inventory):
    """Push one study, or all studies of one patient, to the TsAMI now; or
    release the parked studies of a node, a hospital or the region.

    Works under every policy (all, pathology, on-demand); a study the TsAMI
    refused before (parked) gets another try.  Without --node every LAMI and
    gateway is asked and the study goes from wherever it is held.

    Exit codes: 0 queued, 1 not found on any node or a node failed, 2 invalid input.
    """
    region = load_region(inventory)
    if release_parked:
        if study or patient or urgent:
            raise InvalidInput("--release-parked takes no --study, --patient or --urgent")
        return _release_parked(region, _targets(region, node, hospital), reason, lab)
    if (study is None) == (patient is None):
        raise InvalidInput("give exactly one of --study UID or --patient ID (or --release-parked)")
    targets = _targets(region, node, hospital)
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


def _release_parked(region: Region, targets: list[str], reason: str | None, lab: bool) -> None:
    why = reason or "released by an operator with kontur replicate --release-parked"
    table = Table(title="parked studies released", title_justify="left")
    table.add_column("node", no_wrap=True)
    table.add_column("study", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("was parked for", overflow="fold")
    problems, total = [], 0
    for n in targets:
        try:
            released = nodeapi.client_for(region, n, lab=lab).release_parked(why)
        except nodeapi.NodeError as exc:
            problems.append(str(exc))
            continue
        for r in released:
            total += 1
            table.add_row(n, r.get("study", "?"), r.get("state", "?"), (r.get("was") or "—")[:120])
    out.print(table if total else f"no parked studies on {', '.join(targets)}")
    for p in problems:
        err.print(f"kontur: {p}", markup=False)
    if problems:
        raise OperationFailed(f"{len(problems)} node(s) could not be asked")


#: seconds one node may take to answer `replication status` (--timeout)
TIMEOUT = 15.0


def _store_fix(region: Region, lab: bool) -> str:
    if lab:
        return "run `kontur deploy --lab` first (it makes the lab's store)"
    return (f"bring the region's store to this machine: `kontur secrets export --out FILE` on the operator "
            f"machine that deployed {region.region.name}, then `kontur secrets import FILE` here "
            f"(or point KONTUR_SECRETS at it) -- not `kontur render`, which would make a new store whose CA "
            f"no node trusts")


def _setup_fault(region: Region, lab: bool) -> None:
    """A fault of this machine that keeps it from asking any node, said once
    (exit 2): no secrets store here (checked when a client cannot be made)."""
    from .secrets import default_dir
    if lab:
        return                          # client_for says "no lab up" and where the lab's store is
    directory = default_dir(region.region.name)
    if not directory.is_dir():
        raise InvalidInput(f"this machine has no secrets store for region {region.region.name} ({directory}), "
                           f"so it cannot ask any node: the nodes want the service account's password and "
                           f"the operator certificate from it", hint=_store_fix(region, lab))


def collect_status(region: Region, lab: bool = False, *, timeout: float = TIMEOUT,
                   board: Board | None = None) -> list[dict]:
    """Every replicating node's status, asked at once with one ``timeout`` per
    node (a node that does not answer costs that once, not one after the other).
    A fault of this machine -- no secrets store, an unreadable operator
    certificate, a lost CA, no lab running (--lab) -- that keeps it from asking
    any node is an InvalidInput (exit 2), said once, not N unhealthy nodes.
    ``board``: told when each node starts and ends."""
    nodes = replicating_nodes(region)
    clients, local = {}, {}
    for n in nodes:            # one after the other: making a client may write the operator certificate
        try:
            client = nodeapi.client_for(region, n, lab=lab)
        except InvalidInput as exc:         # this node's (no password for it in the store yet), or none's:
            _setup_fault(region, lab)
            local[n] = exc.message
            continue
        except KonturError as exc:          # every node's alike: a lost CA in the store, no lab running
            raise InvalidInput(f"this machine cannot ask any node: {exc.message}", hint=exc.hint) from None
        except (OSError, ValueError) as exc:  # the operator certificate or the CA cannot be loaded (ssl errors too)
            raise InvalidInput(f"this machine cannot ask any node: the operator certificate or the regional CA "
                               f"in its secrets store cannot be loaded ({exc})",
                               hint="restore the store from its export (`kontur secrets import FILE`)") from None
        client.timeout = timeout
        clients[n] = client
    if nodes and len(local) == len(nodes):
        causes = sorted(set(local.values()))
        raise InvalidInput(f"this machine cannot ask any node: {causes[0]}"
                           + (f" (and {len(causes) - 1} other cause(s))" if len(causes) > 1 else ""))

    def ask(n: str) -> dict:
        row: dict = {"node": n, "reachable": False, "error": local.get(n), "status": None}
        if board is not None:
            where = getattr(clients.get(n), "base_url", None) or region.nodes[n].address
            board.update(n, step=f"asking {where}" if n in clients else "not asked")
        if n in clients:
            try:
                row["status"] = clients[n].replication_status()
                row["reachable"] = True
            except nodeapi.NodeError as exc:
                row["error"] = str(exc)
        if board is not None:
            probs = problems_of(row)
            board.done(n, ok=not probs, summary="; ".join(p.removeprefix(f"{n}: ") for p in probs))
        return row
    with concurrent.futures.ThreadPoolExecutor(max(1, min(64, len(nodes)))) as pool:
        return list(pool.map(ask, nodes))


def problems_of(row: dict) -> list[str]:
    if not row["reachable"]:
        return [row["error"] or "unreachable"]
    st = row["status"] or {}
    if not st.get("enabled"):
        return [f"replication disabled: {st.get('reason')}"]
    out_ = list(st.get("alarms") or [])
    if st.get("parked"):
        out_.append(f"{st['parked']} parked")
    if st.get("failed"):
        out_.append(f"{st['failed']} failing")
    if st.get("overdue"):
        out_.append(f"{st['overdue']} overdue")
    if st.get("divergent"):
        out_.append(f"{st['divergent']} divergent (the TsAMI holds instances deleted here; "
                    "kontur replication problems)")
    fp = st.get("full_pass") or {}
    if fp.get("state") == "running" and fp.get("last_error"):
        out_.append(f"full pass stopped at {fp.get('done')}/{fp.get('total')}: {fp['last_error'].get('message')}")
    return out_


def _full_pass_cell(st: dict) -> str:
    fp = st.get("full_pass") or {}
    if fp.get("state") == "running":
        return f"{fp.get('done', 0)}/{fp.get('total', '?')}" + (" [red]stopped[/red]" if fp.get("last_error") else "")
    done = fp.get("last_completed") or {}
    if done.get("finished_at"):
        import time as _t
        return f"{_age(_t.time() - done['finished_at'])} ago"
    return "not yet"


@click.group("replication", context_settings=CONTEXT)
def replication_group():
    """Hybrid replication LAMI/gateway -> TsAMI: see where every node stands."""


def _short(error: str | None) -> str:
    """An unreachable node's cell (its whole error is printed below the table)."""
    import re
    if not error or "unreachable at" in error:
        return "unreachable"
    m = re.search(r"HTTP \d{3}", error)
    return m.group(0) if m else "not asked"


#: the table's columns: header, and whether its values are short words that must not wrap
_COLUMNS = (("node", True), ("policy", True), ("queue", True), ("oldest\npending", True), ("in flight", True),
            ("delivered", True), ("failed", True), ("parked", True), ("window", True), ("full pass", True),
            ("last error", False))
#: on a narrow terminal (80 columns) the same columns in two tables, each with the node
_NARROW = (("node", "policy", "queue", "oldest\npending", "in flight", "window"),
           ("node", "delivered", "failed", "parked", "full pass", "last error"))


def _cells(r: dict) -> list:
    st = r["status"]
    node = escape(r["node"])
    if not r["reachable"]:
        return [node, *["?"] * 9, Text(_short(r["error"]), style="red")]
    if not st.get("enabled"):
        return [node, "disabled", *["—"] * 8, Text(str(st.get("reason")), style="red")]
    flight = st.get("in_flight")
    flight_s = "—"
    if flight:
        total = flight.get("instances_total")
        flight_s = f"{flight.get('instances_sent', 0)}/{total if total is not None else '?'}" + (
            " urgent" if flight.get("urgent") else "")
    last = st.get("last_error") or {}
    window = "open" if st.get("window_open") else f"in {_age(st.get('seconds_until_window'))}"
    alarm = "; ".join(st.get("alarms") or [])
    return [node, escape(str(st.get("policy", "?"))), str(st.get("queue_depth", 0)),
            _age(st.get("oldest_pending_age_seconds")), flight_s, str(st.get("delivered", 0)),
            str(st.get("failed", 0)), str(st.get("parked", 0)), window, _full_pass_cell(st),
            Text(alarm, style="red") if alarm else Text(last.get("message") or "—")]


def _table(title: str, headers: tuple[str, ...], rows: list[list]) -> Table:
    table = Table(title=title, title_justify="left")
    index = {h: i for i, (h, _) in enumerate(_COLUMNS)}
    for h in headers:
        table.add_column(h, no_wrap=dict(_COLUMNS)[h])
    for cells in rows:
        table.add_row(*(cells[index[h]] for h in headers))
    return whole(table, "node", words=("unreachable", "not asked", "disabled"))


def status_tables(region: Region, rows: list[dict], width: int | None = None) -> list[Table]:
    """The region's replication: one table, or on a terminal too narrow for it
    (``width``, e.g. 80 columns) the same columns in two, so that no node name,
    count or state is cut; the last error wraps (an unreachable node's error,
    with its address, is printed whole below the tables)."""
    from rich.console import Console
    from rich.measure import Measurement
    title = f"{region.region.title} — replication to the TsAMI"
    cells = [_cells(r) for r in rows]
    wide = _table(title, tuple(h for h, _ in _COLUMNS), cells)
    if width is not None:
        console = Console(width=10_000)
        fixed = _table(title, tuple(h for h, _ in _COLUMNS[:-1]), cells)
        needed = Measurement.get(console, console.options, fixed).maximum + 24     # + a last error column
        if needed > width:
            return [_table(title, _NARROW[0], cells), _table("", _NARROW[1], cells)]
    return [wide]


@replication_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per node) instead of a table.")
@click.option("--lab", is_flag=True,
              help="Ask the nodes of the running region lab (kontur lab up, kontur deploy --lab).")
@click.option("--timeout", type=click.FloatRange(1, 600), default=TIMEOUT, show_default=True,
              help="Seconds each node may take; the nodes are asked at once, so a dead node costs this once.")
@inventory_option
def status_command(as_json, lab, timeout, inventory):
    """One table for the whole region: policy, queue, oldest pending, in flight,
    delivered, failed, parked and the last error of every LAMI and gateway.

    The nodes are asked at once, each with --timeout; on a terminal a line
    per node shows who has answered meanwhile.  A fault of this machine (no
    secrets store here, an unreadable operator certificate) is said once.

    Exit codes: 0 all replicating cleanly; 1 a node is unreachable, disabled,
    or has parked, failing or overdue studies; 2 invalid input, or this
    machine cannot ask any node.
    """
    region = load_region(inventory)
    nodes = replicating_nodes(region)
    # on a terminal, a line per node while they answer (cleared for the table); piped: nothing, as ever
    board = Board(nodes, out=err, title="replication status", transient=True,
                  live=None if len(nodes) > 1 and not as_json else False)
    with board:
        rows = collect_status(region, lab=lab, timeout=timeout, board=board)
    bad = {r["node"]: problems_of(r) for r in rows if problems_of(r)}
    if as_json:
        out.print_json(json.dumps([{**r, "problems": problems_of(r)} for r in rows], ensure_ascii=False))
    else:
        for table in status_tables(region, rows, out.width):
            out.print(table)
    if bad:
        if not as_json:
            for node, probs in bad.items():       # whole, addresses and all (the table has no room)
                said = "; ".join(p.removeprefix(f"{node}: ") for p in probs)
                err.print(f"kontur: {node}: {said}", markup=False)
        raise OperationFailed(f"{len(bad)} of {len(rows)} replicating node(s) need attention")


@replication_group.command("problems")
@click.option("--node", metavar="NODE", help="One LAMI or gateway (default: every one).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per node).")
@click.option("--lab", is_flag=True, help="Ask the nodes of the running region lab.")
@inventory_option
def problems_command(node, as_json, lab, inventory):
    """What needs a person: parked studies with their reasons, studies whose
    files are lost from storage, divergent studies (the TsAMI holds instances
    deleted here), corrections not yet applied or refused, and the recent
    audit trail of corrections and releases.

    Exit codes: 0 nothing to look at; 1 something is listed or a node could
    not be asked; 2 invalid input.
    """
    region = load_region(inventory)
    targets = _targets(region, node, None)
    rows, bad = [], 0
    for n in targets:
        try:
            p = nodeapi.client_for(region, n, lab=lab).problems()
            rows.append({"node": n, **p})
        except nodeapi.NodeError as exc:
            rows.append({"node": n, "error": str(exc)})
            bad += 1
    open_corr = lambda p: [c for c in p.get("corrections", []) if c.get("state") != "done"]  # noqa: E731
    for r in rows:
        if "error" not in r and (r["parked"] or r["storage_errors"] or r["divergent"] or open_corr(r)):
            bad += 1
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False))
    else:
        for r in rows:
            if "error" in r:
                err.print(f"kontur: {r['error']}", markup=False)
                continue
            lines = []
            lines += [f"  parked      {p['study_id']}  {p.get('reason') or ''}" for p in r["parked"]]
            lines += [f"  STORAGE     {s['study_id']}  {s.get('storage_error') or ''}" for s in r["storage_errors"]]
            lines += [f"  divergent   {d['study_id']}  the TsAMI holds {d['divergent']} instance(s) deleted here"
                      for d in r["divergent"]]
            lines += [f"  correction  #{c['id']} {c['kind']} {c['state']}: {c['reason']}"
                      + (f" -- {c['last_error']}" if c.get("last_error") else "") for c in open_corr(r)]
            out.print(f"{r['node']}: " + ("nothing to look at" if not lines else f"{len(lines)} item(s)"),
                      markup=False)
            for ln in lines:
                out.print(ln, markup=False)
    if bad:
        raise OperationFailed(f"{bad} of {len(rows)} node(s) need attention")


def _resolve(client, ident: str, level: str) -> str:
    """An Orthanc ID as it is, or the Orthanc ID of a Study/Series Instance UID on that node."""
    import re
    if re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", ident):
        return ident
    want = "Study" if level == "study" else "Series"
    hits = [h["ID"] for h in client.lookup(ident) if h.get("Type") == want]
    if not hits:
        raise OperationFailed(f"{client.name} holds no {level} {ident}")
    if len(hits) > 1:
        raise OperationFailed(f"{client.name}: {ident} names {len(hits)} {level} resources (one per patient); "
                              f"give the Orthanc ID: {', '.join(hits)}")
    return hits[0]


@replication_group.command("correct")
@click.argument("action", type=click.Choice(["reject", "sync"]))
@click.option("--node", metavar="NODE", required=True, help="The LAMI or gateway where the correction is made.")
@click.option("--study", metavar="UID", help="StudyInstanceUID or Orthanc ID.")
@click.option("--series", metavar="UID", help="SeriesInstanceUID or Orthanc ID (reject only).")
@click.option("--reason", metavar="TEXT", required=True, help="Why; kept in the audit trail here and at the TsAMI.")
@click.option("--lab", is_flag=True, help="The node of the running region lab.")
@inventory_option
def correct_command(action, node, study, series, reason, lab, inventory):
    """Correct what the TsAMI holds of a node's studies, audited on both sides.

    \b
    reject  --study S | --series S   delete a wrong study or series here and at the TsAMI
    sync    --study S                retire at the TsAMI the instances of a divergent study
                                     that were deleted here (kontur replication problems)

    Orthanc's own modify (a PatientID or name fixed) needs no command: the
    corrected study replaces the TsAMI's copy by itself.  A plain deletion in
    Orthanc is never propagated.

    Exit codes: 0 queued, 1 the node refused or could not be asked, 2 invalid input.
    """
    region = load_region(inventory)
    _check_node(region, node)
    if action == "sync" and (series or not study):
        raise InvalidInput("sync takes --study only")
    if action == "reject" and (study is None) == (series is None):
        raise InvalidInput("reject takes exactly one of --study or --series")
    client = nodeapi.client_for(region, node, lab=lab)
    level = "study" if study else "series"
    try:
        rid = _resolve(client, study or series, level)
        answer = client.correct({"action": action, level: rid, "reason": reason})
    except nodeapi.NodeError as exc:
        raise OperationFailed(str(exc)) from None
    out.print_json(json.dumps(answer, ensure_ascii=False))
