"""``kontur study status``: a study's way across the region, with times
(issue 12, "status online"): ordered -> on the worklist -> started (MPPS) ->
archived in the LAMI -> validated / quarantined -> report attached ->
delivered to the TsAMI -> the MIS notified.

The answer lives where the study is: each LAMI and gateway answers
``GET /kontur/study/ACCESSION|STUDY-UID`` (kontur's plugin, from the HL7
service's state and its own outbox); this command asks them
(:mod:`kontur.nodeapi`) and prints the first that knows the study.
"""
from __future__ import annotations

import json

import click
from rich.table import Table

from .. import nodeapi, target
from . import CONTEXT, err, inventory_option, load_region, out
from .core import secrets_option
from ..errors import InvalidInput, OperationFailed
from ..model import Role
from ..replication_cli import _targets


@click.group("study", context_settings=CONTEXT)
def study_group():
    """One study across the region."""


@study_group.command("status")
@click.argument("value", metavar="ACCESSION|STUDY-UID")
@click.option("--node", metavar="NODE", help="Ask only this LAMI or gateway.")
@click.option("--hospital", metavar="H", help="Ask only this hospital's LAMI or gateway.")
@click.option("--json", "as_json", is_flag=True, help="Print the node's JSON answer.")
@click.option("--lab", is_flag=True, help="Ask the nodes of the running region lab.")
@inventory_option
@secrets_option
def status_command(value, node, hospital, as_json, lab, inventory, secrets_dir):
    """The study's steps with their times and what is still to come.  Exit 0
    found; 1 no node knows it or a node could not be asked; 2 invalid input."""
    if not value.strip():
        raise InvalidInput("give an accession number or a Study Instance UID")
    region = load_region(inventory)
    where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
    problems = []
    for n in _targets(region, node, hospital):
        try:
            body = nodeapi.client_for(where, n).get(f"kontur/study/{value}")
        except nodeapi.NodeError as exc:
            if exc.status == 404:
                continue
            if exc.status == 400:
                raise InvalidInput((exc.body or {}).get("error") if isinstance(exc.body, dict) else str(exc))
            problems.append(str(exc))
            continue
        body = {"node": n, "hospital": region.hospital_of(n), **body}
        if as_json:
            out.print_json(json.dumps(body, ensure_ascii=False))
        else:
            _print(body)
        return 0
    for p in problems:
        err.print(f"kontur: {p}", markup=False, highlight=False)
    raise OperationFailed(f"no node knows a study or order {value}"
                          + (f" ({len(problems)} node(s) could not be asked)" if problems else ""),
                          hint="an accession number as the MIS sent it (OBR-18), or the Study Instance UID")


def _print(body: dict) -> None:
    head = [f"study on {body['node']}" + (f" ({body['hospital']})" if body.get("hospital") else "")]
    for key, label in (("accession", "accession"), ("study_uid", "Study Instance UID"),
                       ("patient_id", "patient ID"), ("viewer_url", "viewer")):
        if body.get(key):
            head.append(f"{label}: {body[key]}")
    out.print("\n".join(head), markup=False, highlight=False)
    t = Table(title_justify="left")
    for col in ("when (UTC)", "step", "detail"):
        t.add_column(col)
    for s in body.get("steps", []):
        t.add_row((s.get("at") or "").replace("T", " ").replace("+00:00", ""), s["what"], s.get("detail") or "")
    out.print(t)
    if body.get("to_come"):
        out.print("still to come: " + ", ".join(body["to_come"]), markup=False, highlight=False)


def _tsami(where: target.Target):
    nodes = where.region.nodes_by_role(Role.TSAMI)
    if not nodes:
        raise InvalidInput("the inventory has no TsAMI node (role: tsami): studies are shared on the TsAMI")
    return nodes[0], nodeapi.client_for(where, nodes[0])


def _share_call(region, lab: bool, secrets_dir: str | None, method: str, path: str, body=None):
    node, client = _tsami(target.resolve(region, lab=lab, secrets_dir=secrets_dir))
    try:
        return node, client.request(method, path, body)
    except nodeapi.NodeError as exc:
        if exc.status in (400, 404, 409):
            raise InvalidInput(str(exc)) from None
        raise OperationFailed(str(exc)) from None


@study_group.command("share")
@click.argument("study", metavar="STUDY-UID|ACCESSION")
@click.option("--with", "hospital", required=True, metavar="HOSPITAL",
              help="The hospital whose radiologists may open the study on the TsAMI.")
@click.option("--days", type=click.IntRange(1, 90), default=7, show_default=True, help="How long the share lasts.")
@click.option("--reason", required=True, metavar="TEXT", help="Why: double reading, second opinion, ...")
@click.option("--lab", is_flag=True, help="Share on the running region lab's TsAMI.")
@inventory_option
@secrets_option
def share_command(study, hospital, days, reason, lab, inventory, secrets_dir):
    """Let another hospital's radiologists open a study's TsAMI copy through
    the viewer link for DAYS days (double reading, second opinion).  The
    share, each opening through it and its revocation are audited on the
    TsAMI.  Exit 0 shared; 1 the TsAMI could not be asked; 2 invalid input."""
    region = load_region(inventory)
    if hospital not in region.hospitals:
        raise InvalidInput(f"--with {hospital!r} is not a hospital of the inventory; expected one of "
                           + ", ".join(sorted(region.hospitals)))
    node, body = _share_call(region, lab, secrets_dir, "POST", "kontur/shares",
                             {"study": study, "hospital": hospital, "days": days, "reason": reason})
    s = body["share"]
    out.print(f"shared study {s['study_uid']} with {hospital} on {node} until {s['expires_at']} "
              f"(share {s['id']}; revoke: kontur study unshare {s['id']})", markup=False, highlight=False)
    return 0


@study_group.command("shares")
@click.option("--json", "as_json", is_flag=True, help="Print the TsAMI's JSON answer (with the audit trail).")
@click.option("--lab", is_flag=True, help="Ask the running region lab's TsAMI.")
@inventory_option
@secrets_option
def shares_command(as_json, lab, inventory, secrets_dir):
    """The TsAMI's shares: active, expired and revoked."""
    region = load_region(inventory)
    node, body = _share_call(region, lab, secrets_dir, "GET", "kontur/shares")
    if as_json:
        out.print_json(json.dumps(body, ensure_ascii=False))
        return 0
    t = Table(title=f"shares on {node}", title_justify="left")
    for col in ("id", "study", "hospital", "state", "until (UTC)", "by", "reason"):
        t.add_column(col)
    for s in body.get("shares", []):
        t.add_row(str(s["id"]), s["study_uid"], s["hospital"], s["state"], s["expires_at"], s["granted_by"],
                  s["reason"])
    out.print(t)
    return 0


@study_group.command("unshare")
@click.argument("share_id", metavar="SHARE-ID", type=int)
@click.option("--lab", is_flag=True, help="On the running region lab's TsAMI.")
@inventory_option
@secrets_option
def unshare_command(share_id, lab, inventory, secrets_dir):
    """End a share now (audited)."""
    region = load_region(inventory)
    node, body = _share_call(region, lab, secrets_dir, "DELETE", f"kontur/shares/{share_id}")
    s = body["share"]
    out.print(f"share {s['id']} of study {s['study_uid']} with {s['hospital']}: {s['state']}",
              markup=False, highlight=False)
    return 0
