# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur research``: the research feeds (issue 16) from the control machine.

The work happens on the feed's collection point (the TsAMI unless the feed
names a LAMI), as user orthanc, by the deployed ``kontur_plugins.research``
over SSH (the settings ``deploy`` uses).  Nothing secret is on a command
line: the node reads its key and accounts from its own files.

    kontur research export FEED [--since YYYYMMDD]     past studies through a feed
    kontur research reidentify KEY --reason WHY --as LOGIN
    kontur research audit                              who asked what, when, why
"""
from __future__ import annotations

import json
import shlex
import subprocess

import click

from .. import target
from ..errors import InvalidInput, OperationFailed
from ..model import Region, Role
from ..render import orthanc as oc
from ..render import research as rr
from . import CONTEXT, err, inventory_option, load_region, out
from .core import secrets_option


def _node_command(*args: str) -> list[str]:
    return ["runuser", "-u", "orthanc", "--", "env", f"PYTHONPATH={oc.KONTUR_PLUGIN_DIR}",
            "PYTHONDONTWRITEBYTECODE=1", "python3", "-m", "kontur_plugins.research", *args]


def _run(where: target.Target, node: str, argv: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
    ssh = where.ssh(node)
    try:
        # ssh hands the words to the remote shell: each quoted (a reason has spaces and Cyrillic)
        return subprocess.run(ssh.argv(where.address(node), *map(shlex.quote, argv)), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{node}: no answer within {timeout:g} s") from None


def _exporting_node(region: Region, feed: str | None) -> str:
    if feed is not None:
        if feed not in region.research.feeds:
            raise InvalidInput(f"no research feed {feed!r} in the inventory; it has: "
                               f"{', '.join(sorted(region.research.feeds)) or 'none'}")
        f = region.research.feeds[feed]
        return f.at or region.nodes_by_role(Role.TSAMI)[0]
    return _exporting_nodes(region)[0]


def _exporting_nodes(region: Region) -> list[str]:
    """Every node that exports (each holds the key map of its feeds): the TsAMI first."""
    tsami = region.nodes_by_role(Role.TSAMI)[0]
    nodes = sorted({f.at or tsami for f in region.research.feeds.values()}, key=lambda n: (n != tsami, n))
    if not nodes:
        raise InvalidInput("the inventory declares no research feed (research.feeds)")
    return nodes


def _node_error(node: str, p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    return f"{node}: {lines[-1] if lines else f'exit {p.returncode}'}"


@click.group("research", context_settings=CONTEXT)
def research_group():
    """The research sandbox's feeds: de-identified copies, and re-identification by key (R9)."""


@research_group.command("export")
@click.argument("feed")
@click.option("--since", metavar="YYYYMMDD", help="Only studies from this Study Date on.")
@click.option("--lab", is_flag=True, help="In the running region lab.")
@inventory_option
@secrets_option
def export_command(feed, since, lab, inventory, secrets_dir):
    """Send past studies through FEED (new ones go as they arrive).  An
    instance the feed delivered once is not sent again.  Exit 0; 1 when a
    study could not be exported cleanly; 2 invalid input."""
    region = load_region(inventory)
    node = _exporting_node(region, feed)
    if since is not None and not (len(since) == 8 and since.isdigit()):
        raise InvalidInput(f"--since {since!r} is not a date; expected YYYYMMDD")
    where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
    args = ["export", "--policy", oc.POLICY_FILE, "--secrets", rr.SECRETS_FILE, "--keymap", rr.KEYMAP, feed]
    if since:
        args += ["--since", since]
    p = _run(where, node, _node_command(*args))
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    selected = [r for r in rows if r["selected"]]
    delivered = sum(len(r["delivered"]) for r in selected)
    held = [(r["study"], h) for r in selected for h in r["held"]]
    out.print(f"feed {feed} at {node}: {len(rows)} stud{'y' if len(rows) == 1 else 'ies'} judged, "
              f"{len(selected)} selected, {delivered} instance(s) delivered, "
              f"{sum(r['already'] for r in selected)} already there, {len(held)} held back", markup=False)
    for study, h in held:
        out.print(f"  held back {study} / {h['instance']}: {h['reason']}", markup=False)
    if p.returncode == 2 or (p.returncode != 0 and not rows):
        raise (InvalidInput if p.returncode == 2 else OperationFailed)(_node_error(node, p))
    if p.returncode != 0:
        raise OperationFailed(f"{node}: some studies could not be exported cleanly (see above; nothing "
                              f"identifying was delivered)")


@research_group.command("reidentify")
@click.argument("key", metavar="PSEUDONYM|STUDY-UID")
@click.option("--reason", required=True, help="Why (audited with who, when and what).")
@click.option("--as", "login", required=True, metavar="LOGIN", help="The inventory user asking.")
@click.option("--send-to", "send_to", default=None, metavar="NODE",
              help="Also send the original studies back to this hospital archive (a LAMI).")
@click.option("--lab", is_flag=True, help="In the running region lab.")
@inventory_option
@secrets_option
def reidentify_command(key, reason, login, send_to, lab, inventory, secrets_dir):
    """Who a pseudonym (or a research copy's Study Instance UID) is, and with
    --send-to the original studies (that research study's, or every study of
    the pseudonym) sent from the MIAC's archive back to a hospital's LAMI for
    clinical use.  Only a user whose role is in research.reidentify_roles
    may; every request, refused or not, and every send is audited at the
    MIAC.  Exit 0; 1 refused, unknown or not sent; 2 invalid input."""
    region = load_region(inventory)
    node = _exporting_node(region, None)
    if send_to is not None:
        lamis = sorted(n for n in oc.outgoing_peers(region, node) if region.nodes[n].role == Role.LAMI)
        if send_to not in lamis:
            raise InvalidInput(f"--send-to {send_to!r} is not a hospital archive {node} sends to; "
                               f"expected one of: {', '.join(lamis) or 'none'}")
    user = next((u for u in region.users if u.login == login), None)
    refused = None
    if user is None:
        refused = f"{login!r} is no user of the inventory"
    elif user.role not in region.research.reidentify_roles:
        refused = (f"{login} has role {user.role}; re-identification is for "
                   f"{', '.join(region.research.reidentify_roles) or 'no role (research.reidentify_roles is empty)'}")
    where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
    args = ["reidentify", "--keymap", rr.KEYMAP, "--who", login, "--reason", reason, key]
    if refused:
        args[1:1] = ["--refused", refused]
    elif send_to:
        args[1:1] = ["--send-to", send_to, "--secrets", rr.SECRETS_FILE]
    if refused:
        _run(where, node, _node_command(*args), timeout=120)
        raise OperationFailed(f"refused: {refused} (the request is audited on {node})")
    # each exporting node knows its own feeds' pseudonyms: asked in turn (each audits the request)
    for node in [node] + [n for n in _exporting_nodes(region) if n != node]:
        p = _run(where, node, _node_command(*args), timeout=120)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if lines:
            break
        if "is no pseudonym or research study UID" not in p.stderr:
            raise OperationFailed(_node_error(node, p))
    else:
        raise OperationFailed(f"{key!r} is no pseudonym or research study UID any exporting node "
                              f"({', '.join(_exporting_nodes(region))}) made (the request is audited there)")
    person = json.loads(lines[-1])
    for k in ("pseudonym", "patient_name", "patient_id", "issuer", "birth_date", "original_study_uid"):
        if person.get(k):
            out.print(f"{k:20} {person[k]}", markup=False)
    for s in person.get("sent") or []:
        out.print(f"sent back           the original study {s['study_uid']} ({s['instances']} instances) to "
                  f"{s['to']}", markup=False)
    if person.get("problem"):
        raise OperationFailed(f"{node}: {person['problem']} (audited)")


@research_group.command("audit")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.option("--lab", is_flag=True, help="In the running region lab.")
@inventory_option
@secrets_option
def audit_command(as_json, lab, inventory, secrets_dir):
    """Every re-identification request: when, who, why, what, and the answer."""
    region = load_region(inventory)
    nodes = _exporting_nodes(region)
    where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
    rows = []
    for node in nodes:
        p = _run(where, node, _node_command("audit", "--keymap", rr.KEYMAP), timeout=120)
        if p.returncode != 0:
            raise OperationFailed(_node_error(node, p))
        rows += [dict(json.loads(x), node=node) for x in p.stdout.splitlines() if x.startswith("{")]
    rows.sort(key=lambda r: r["at"])
    if as_json:
        for r in rows:              # one JSON object per line
            click.echo(json.dumps(r, ensure_ascii=False))
        return
    import datetime as dt
    for r in rows:
        when = dt.datetime.fromtimestamp(r["at"]).strftime("%Y-%m-%d %H:%M:%S")
        at_node = f"{r['node']:10} " if len(nodes) > 1 else ""
        out.print(f"{when}  {at_node}{r['who']:12} {r['asked']:28} {r['answer']}  — {r['reason']}", markup=False)
    if not rows:
        err.print(f"kontur: no re-identification was asked on {', '.join(nodes)}", markup=False)
