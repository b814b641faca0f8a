"""``kontur check``: run the read-only health and compliance checks (checks/)
against the region's hosts (or the lab's) and hand auditors a report."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import click

from .cli import inventory_option, inventory_path, load_region, out
from .errors import InvalidInput, OperationFailed
from .inventory import REPO_ROOT

CHECKS = REPO_ROOT / "checks"


@click.command("check", context_settings={"help_option_names": ["-h", "--help"]})
@inventory_option
@click.option("--lab", is_flag=True, help="Check the running lab's hosts.")
@click.option("--node", "nodes", multiple=True, metavar="NODE", help="Check only this node (repeatable).")
@click.option("--report", metavar="FILE", default=None,
              help="Also write a JUnit XML report (one case per control and node) for the audit file.")
@click.option("--secrets", "secrets_dir", metavar="DIR", default=None, help="Secrets store (read only).")
@click.option("-k", "select", metavar="EXPR", default=None, help="Only controls matching EXPR (pytest -k).")
def check_command(inventory, lab, nodes, report, secrets_dir, select):
    """Check every node against the inventory: services running, files as
    rendered (drift), the security baseline, firewall, TLS, disk thresholds.

    Read-only: nothing on a host is changed.  Exit 0 when every control
    passes, 1 when any fails.
    """
    if not CHECKS.is_dir():
        raise InvalidInput(f"{CHECKS} is missing: the checkout is incomplete")
    # the inventory first, with validate's messages (line N: what is wrong, what was expected)
    region = load_region(inventory)
    unknown = [n for n in nodes if n not in region.nodes]
    if unknown:
        raise InvalidInput(f"--node {', '.join(unknown)}: not in the inventory; known: {', '.join(region.nodes)}")
    missing = [m for m in ("pytest", "testinfra") if importlib.util.find_spec(m) is None]
    if missing:
        raise OperationFailed(f"the controls cannot run: {', '.join(missing)} is not installed in this Python "
                              f"({sys.executable})", hint="./run setup installs it (the test extra)")
    args = [sys.executable, "-m", "pytest", str(CHECKS), "-q", "-p", "no:cacheprovider", "-rfE",
            "--inventory", str(inventory_path(inventory))]
    if lab:
        args.append("--lab")
    for n in nodes:
        args += ["--kontur-node", n]
    if secrets_dir:
        args += ["--secrets", secrets_dir]
    if report:
        args += [f"--junitxml={Path(report).resolve()}"]
    if select:
        args += ["-k", select]
    rc = subprocess.call(args, cwd=REPO_ROOT)
    if rc == 5:
        raise InvalidInput("no control matched (check --node and -k)")
    if rc not in (0, 1):
        raise InvalidInput(f"the checks could not run (pytest exit {rc}); see the messages above")
    out.print("all controls passed" if rc == 0 else "some controls FAILED: see above")
    return rc
