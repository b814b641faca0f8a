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

from . import nodeapi
from .cli import CONTEXT, err, inventory_option, load_region, out
from .errors import InvalidInput, OperationFailed
from .replication_cli import _targets


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
def status_command(value, node, hospital, as_json, lab, inventory):
    """The study's steps with their times and what is still to come.  Exit 0
    found; 1 no node knows it or a node could not be asked; 2 invalid input."""
    if not value.strip():
        raise InvalidInput("give an accession number or a Study Instance UID")
    region = load_region(inventory)
    problems = []
    for n in _targets(region, node, hospital):
        try:
            body = nodeapi.client_for(region, n, lab=lab).get(f"kontur/study/{value}")
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
