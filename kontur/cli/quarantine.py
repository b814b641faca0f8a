"""``kontur quarantine``: what the transfer package holds back, across the
region, and the audited manual release (issue 10).

Quarantine lives where the study is (the hospital's LAMI or gateway); these
commands ask those nodes through their REST API (:mod:`kontur.nodeapi`).
"""
from __future__ import annotations

import datetime as dt
import json

import click
from rich.table import Table

from .. import nodeapi, target
from . import CONTEXT, err, inventory_option, load_region, out
from .core import secrets_option
from ..errors import InvalidInput, OperationFailed
from ..replication_cli import _targets


@click.group("quarantine", context_settings=CONTEXT)
def quarantine_group():
    """Studies the transfer package holds back (reglament 004 §5.6), and their release."""


def _when(ts) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "—"


@quarantine_group.command("list")
@click.option("--hospital", metavar="H", help="Only this hospital's LAMI or gateway.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per node).")
@click.option("--lab", is_flag=True, help="Ask the nodes of the running region lab.")
@inventory_option
@secrets_option
def list_command(hospital, as_json, lab, inventory, secrets_dir):
    """What is held and why, with each node's counts (valid / incomplete /
    quarantined).  Exit 0 nothing held; 1 something is held or a node could
    not be asked; 2 invalid input."""
    region = load_region(inventory)
    where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
    rows, bad = [], 0
    for n in _targets(region, None, hospital):
        try:
            rows.append({"node": n, **nodeapi.client_for(where, n).quarantine()})
        except nodeapi.NodeError as exc:
            rows.append({"node": n, "hospital": region.hospital_of(n), "error": str(exc)})
            bad += 1
    held = sum(1 for r in rows for q in r.get("quarantined", []) if not q.get("released"))
    if as_json:
        out.print_json(json.dumps(rows, ensure_ascii=False))
    else:
        t = Table(title="quarantine", title_justify="left")
        for col in ("node", "hospital", "mode", "valid", "incomplete", "quarantined", "released"):
            t.add_column(col)
        for r in rows:
            s = r.get("summary") or {}
            t.add_row(r["node"], r.get("hospital") or "—", r.get("mode") or "—",
                      *(str(s.get(k, "—")) for k in ("valid", "incomplete", "quarantined", "released")))
        out.print(t)
        for r in rows:
            if "error" in r:
                err.print(f"kontur: {r['node']}: {r['error']}", markup=False)
                continue
            for q in r.get("quarantined", []):
                mark = "released" if q.get("released") else "HELD"
                out.print(f"{r['node']}  {mark:8}  {q['study_id']}  (checked {_when(q.get('checked_at'))})",
                          markup=False)
                for reason in q["reasons"]:
                    out.print(f"    - {reason}", markup=False)
                if q.get("released"):
                    out.print(f"    released {_when(q.get('released_at'))} by {q.get('released_by') or '?'}: "
                              f"{q.get('release_reason')}", markup=False)
    if bad or held:
        raise OperationFailed(f"{held} stud{'y' if held == 1 else 'ies'} held in quarantine"
                              + (f"; {bad} node(s) could not be asked" if bad else ""))


@quarantine_group.command("release")
@click.argument("study")
@click.option("--reason", metavar="TEXT", required=True, help="Why the study may go as it is (audited on the node).")
@click.option("--hospital", metavar="H", help="The hospital whose node holds it (default: ask every one).")
@click.option("--lab", is_flag=True, help="The nodes of the running region lab.")
@inventory_option
@secrets_option
def release_command(study, reason, hospital, lab, inventory, secrets_dir):
    """Let a quarantined STUDY (StudyInstanceUID or Orthanc ID) go as it is:
    the manual override, kept in the node's audit trail (who, when, why)."""
    if not reason.strip():
        raise InvalidInput("--reason is empty; say why the study may go as it is")
    region = load_region(inventory)
    where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
    released, errors = [], []
    for n in _targets(region, None, hospital):
        try:
            res = nodeapi.client_for(where, n).release_quarantine(study, reason)
            released.append((n, res))
        except nodeapi.NodeError as exc:
            if exc.status in (404, 409):
                continue            # not there, or not quarantined there
            errors.append(f"{n}: {exc}")
    for n, res in released:
        out.print(f"{n}: released {res['released']['study_id']} (now {res['state']})", markup=False)
    if not released:
        raise InvalidInput(f"no node holds {study} in quarantine"
                           + (f" ({'; '.join(errors)})" if errors else ""))
    if errors:
        raise OperationFailed("; ".join(errors))
