# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur check`` (on-call: the region's health in seconds) and ``kontur
audit`` (auditors: the controls under checks/, with evidence).

``check`` asks every node at once, one SSH round trip each
(``kontur/scripts/health_probe.py``) plus HTTPS from the control machine,
with one timeout per node; :mod:`kontur.health` judges the answers.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
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

from . import health, reach
from .cli import inventory_option, inventory_path, load_region, names_in, out, whole
from .errors import InvalidInput, OperationFailed
from .files import atomic_write
from .paths import ROOT as REPO_ROOT

CHECKS = REPO_ROOT / "checks"
PROBE = Path(__file__).resolve().parent / "scripts" / "health_probe.py"
_COLOURS = {health.GREEN: "green", health.YELLOW: "yellow", health.RED: "bold red"}


def _known_nodes(region, nodes) -> list[str]:
    unknown = [n for n in nodes if n not in region.nodes]
    if unknown:
        raise InvalidInput(f"--node {', '.join(unknown)}: not in the inventory; known: {', '.join(region.nodes)}")
    return [n for n in region.nodes if not nodes or n in nodes]


class Target:
    """The region as this run reaches it: the inventory's or the running lab's
    addresses, SSH settings (:mod:`kontur.reach`) and secrets store."""

    def __init__(self, region, lab: bool, secrets_dir: str | None):
        from .secrets import SecretStore, store_dir
        self.lab = lab
        self.state = None
        if lab:
            from .lab.state import running_lab_region, require_state
            self.state = require_state()
            region = running_lab_region(region)
        self.region = region
        directory = store_dir(region.region.name, secrets_dir, lab=lab)
        if not directory.is_dir():
            raise InvalidInput(f"the secrets store {directory} does not exist; "
                               f"run `kontur {'deploy --lab' if lab else 'render'}` first, or pass --secrets DIR")
        self.store = SecretStore(directory, create=False)
        from .pki import operator_cert
        # made once, here: the nodes' threads only read it
        self.operator = operator_cert(self.store, region.region.title)

    def ssh(self, node: str) -> reach.Ssh:
        """How the check's probe reaches ``node`` (X25519 key exchange: reach.CHECK_KEX)."""
        if self.lab:
            return dataclasses.replace(reach.lab(self.state, node), kex=reach.CHECK_KEX)
        return dataclasses.replace(reach.production(), port=self.region.ports(node).ssh, kex=reach.CHECK_KEX)

    def https_client(self, node: str, timeout: float):
        from .nodeapi import SERVICE_USER, NodeClient
        spec = self.region.nodes[node]
        ca, cert, key = self.operator
        password = self.store.get(f"nodes/{node}/{SERVICE_USER}")
        url = f"https://{spec.address}:{self.region.ports(node).https}/"
        return NodeClient(url, SERVICE_USER if password else None, password, str(ca), str(cert), str(key),
                          timeout=timeout, name=node)


def _probe(target: Target, node: str, bundle, timeout: float) -> tuple[dict | None, str | None]:
    params = health.probe_params(target.region, node, bundle)
    script = PROBE.read_text() + f"\nmain(json.loads({json.dumps(json.dumps(params))}))\n"
    ssh = target.ssh(node)
    # -S: no site-packages to scan (the probe is standard library only)
    argv = ssh.argv(target.region.nodes[node].address, "python3", "-S", "-")
    try:
        p = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:g} s"
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return None, f"{why[:200]} (ssh {ssh.user}@{target.region.nodes[node].address}:{ssh.port})"
    try:
        return json.loads(p.stdout), None
    except ValueError:
        return None, f"the probe answered no JSON: {p.stdout[-200:]!r}"


def _https(target: Target, node: str, timeout: float) -> str | None:
    from .nodeapi import NodeError
    archive = target.region.nodes[node].role.value in ("tsami", "lami", "gateway", "research")
    try:
        target.https_client(node, timeout).get("system")
    except NodeError as exc:
        if exc.unreachable:
            return str(exc).split(": ", 1)[-1]
        if archive:         # nginx answered, what is behind it did not (its page is no message)
            return f"GET /system through nginx answered HTTP {exc.status}"
    return None


def probe_node(target: Target, node: str, bundle, timeout: float) -> health.NodeHealth:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        probe = pool.submit(_probe, target, node, bundle, timeout)
        https = pool.submit(_https, target, node, min(timeout, 10.0))
        (answer, ssh_error), https_error = probe.result(), https.result()
    return health.judge(target.region, node, bundle, answer, ssh_error=ssh_error, https_error=https_error,
                        seconds=time.monotonic() - started)


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


def _write_atomically(path: Path, text: str) -> None:
    """node_exporter's textfile collector must never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), 0o644)


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
    target = Target(region, lab, secrets_dir)
    started = time.monotonic()
    from .render import render_node
    # rendered here, one after the other (rendering may write a missing key to the store)
    bundles = {n: render_node(target.region, n, target.store) for n in names}
    with concurrent.futures.ThreadPoolExecutor(max(1, min(32, len(names)))) as pool:
        results = list(pool.map(lambda n: probe_node(target, n, bundles[n], timeout), names))
    seconds = time.monotonic() - started
    if prometheus:
        _write_atomically(Path(prometheus), health.prometheus(results))
    if as_json:
        out.print_json(json.dumps(health.as_json(target.region, results, time.time())))
    else:
        out.print(_table(results, target.region, seconds))
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
        raise InvalidInput(f"{CHECKS} is missing: the checkout is incomplete")
    region = load_region(inventory)
    _known_nodes(region, nodes)
    missing = [m for m in ("pytest", "testinfra") if importlib.util.find_spec(m) is None]
    if missing:
        raise OperationFailed(f"the controls cannot run: {', '.join(missing)} is not installed in this Python "
                              f"({sys.executable})", hint="./run setup installs it (the test extra)")
    from . import audit_report
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

