# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur check`` (on-call: the region's health in seconds) and ``kontur
audit`` (auditors: the controls under checks/, with evidence): the command
line of :mod:`kontur.check`.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from .. import health
from ..check import CHECKS, Target, _known_nodes, check_nodes, write_atomically
from ..errors import InvalidInput, OperationFailed
from ..paths import ROOT as REPO_ROOT
from . import inventory_option, inventory_path, load_region, names_in, out, whole

_COLOURS = {health.GREEN: "green", health.YELLOW: "yellow", health.RED: "bold red"}


def _table(results: list[health.NodeHealth], region, seconds: float) -> Table:
    level = health.worst(r.level for r in results)
    t = Table(title=f"{region.region.title}: {level.upper()} — {len(results)} node(s) in {seconds:.1f} s",
              title_justify="left", show_lines=False)
    for col in ("", "node", "what", "detail", "call"):
        t.add_column(col, overflow="fold")
    for row in health.rows(results):
        colour = _COLOURS[row["level"]]
        t.add_row(f"[{colour}]{'●' if row['node'] else '·'} {row['level']}[/]",
                  *(escape(row[k]) for k in ("node", "what", "detail", "call")))
    return whole(t, "node", words=names_in(region))



@click.command("check", context_settings={"help_option_names": ["-h", "--help"]})
@inventory_option
@click.option("--lab", is_flag=True, help="Check the running lab's hosts.")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="Check only this node (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines instead of the table.")
@click.option("--prometheus", metavar="FILE", default=None,
              help="Also write node_exporter's textfile-collector format to FILE (atomically).")
@click.option("--strict", is_flag=True, help="Exit 1 on yellow too.")
@click.option("--timeout", type=click.FloatRange(1, 600), default=20.0, show_default=True,
              help="Seconds each node may take; a dead node costs this, not a hang.")
@click.option("--secrets", "secrets_dir", metavar="DIR", default=None, help="Secrets store (read only).")
def check_command(inventory, lab, nodes, as_json, prometheus, strict, timeout, secrets_dir):
    """On-call: every node's health at once, green / yellow / red, with whom to
    call next to every red row.

    Per node, in parallel: SSH reachable; its services active; Orthanc's REST
    with the service account (and default credentials refused); C-ECHO to its
    DICOM port and from it to its peers; HTTPS from here (mutual TLS) and
    refused without a certificate; disks against the inventory's thresholds;
    replication queue, deadline, parked and quarantined studies; each device's
    last study against its rhythm; days left on every certificate.

    SSH: KONTUR_SSH_USER, KONTUR_SSH_KEY, KONTUR_KNOWN_HOSTS, KONTUR_SSH_SUDO=1
    (the same as deploy).  Read-only.  Exit 0 healthy, 1 anything red (or
    yellow with --strict), 2 invalid input.
    """
    region = load_region(inventory)
    names = _known_nodes(region, nodes)
    run = Target(region, lab, secrets_dir)
    started = time.monotonic()
    results = check_nodes(run, names, timeout)
    seconds = time.monotonic() - started
    if prometheus:
        write_atomically(Path(prometheus), health.prometheus(results))
    if as_json:
        out.print_json(json.dumps(health.as_json(run.region, results, time.time())))
    else:
        out.print(_table(results, run.region, seconds))
    return health.exit_code(results, strict)


@click.command("audit", context_settings={"help_option_names": ["-h", "--help"]})
@inventory_option
@click.option("--lab", is_flag=True, help="Audit the running lab's hosts (and run the probes that write).")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="Audit only this node (repeatable).")
@click.option("--report", metavar="DIR", default=None,
              help="Write the evidence to DIR: an HTML page per hospital and a region summary, "
                   "JUnit XML (a case per control and node) and JSON.")
@click.option("--secrets", "secrets_dir", metavar="DIR", default=None, help="Secrets store (read only).")
@click.option("-k", "select", metavar="EXPR", default=None, help="Only controls matching EXPR (pytest -k).")
def audit_command(inventory, lab, nodes, report, secrets_dir, select):
    """Auditors: every control under checks/ against every node -- the security
    baseline probed live, drift against what the inventory renders, the
    reglament's requirements -- with the command, the answer and the time as
    evidence for each finding.

    The controls are testinfra modules: ``pytest checks/ --inventory FILE
    --hosts=...`` runs them the testinfra way.  Exit 0 compliant, 1 findings,
    2 invalid input.
    """
    if not CHECKS.is_dir():
        raise InvalidInput(f"{CHECKS} is missing: this kontur is installed without its controls (checks/)",
                           hint="reinstall kontur (pip install of its wheel carries checks/ as package data)")
    region = load_region(inventory)
    _known_nodes(region, nodes)
    missing = [m for m in ("pytest", "testinfra") if importlib.util.find_spec(m) is None]
    if missing:
        raise OperationFailed(f"the controls cannot run: {', '.join(missing)} is not installed in this Python "
                              f"({sys.executable})", hint="pip install kontur installs them (they are among its dependencies)")
    from .. import audit_report
    with tempfile.TemporaryDirectory(prefix="kontur-audit-") as tmp:
        results = Path(tmp) / "results.jsonl"
        args = [sys.executable, "-m", "pytest", str(CHECKS), "-q", "-p", "no:cacheprovider", "-rfE",
                "--inventory", str(inventory_path(inventory)), "--kontur-results", str(results)]
        if lab:
            args.append("--lab")
        for n in nodes:
            args += ["--kontur-node", n]
        if secrets_dir:
            args += ["--secrets", secrets_dir]
        if select:
            args += ["-k", select]
        rc = subprocess.call(args, cwd=REPO_ROOT)
        if rc == 5:
            raise InvalidInput("no control matched (check --node and -k)")
        if rc not in (0, 1):
            raise InvalidInput(f"the controls could not run (pytest exit {rc}); see the messages above")
        outcomes = audit_report.read_results(results)
    if report:
        written = audit_report.write(Path(report), region, outcomes, lab=lab)
        out.print(f"report: {written['index']} (+ {len(written['hospitals'])} hospital page(s), "
                  f"{written['junit'].name}, {written['json'].name})", markup=False)
    failed = [o for o in outcomes if o.outcome in ("failed", "error")]
    out.print(f"{len(outcomes)} control result(s): "
              + ("all passed" if not failed else f"{len(failed)} finding(s): "
                 + ", ".join(sorted({o.name for o in failed}))), markup=False)
    return 1 if failed or rc == 1 else 0

