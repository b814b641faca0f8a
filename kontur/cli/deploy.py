# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur deploy``: the command line of the deploy runner (:mod:`kontur.deploy`).

The options, the operator's confirmation and the printed lines live here; the
runner takes a :class:`~kontur.target.Target` and callbacks, and imports no
CLI module (``tests/unit/test_layout.py``).
"""
from __future__ import annotations

import os
import sys

import click

from .. import target
from ..deploy import HostProgress, deploy_target, run_deploy
from ..errors import InvalidInput, OperationFailed
from ..progress import Board
from . import err, load_region, out


def board_callbacks(board: Board, quiet: bool = False, dry_run: bool = False):
    """The runner's ``emit`` and ``on_host`` drawn on ``board``.

    Piped (the board off), every line is printed as the runner says it, as
    always.  On a terminal, the board's row shows each host's step, changed
    count and time instead of its "host: step" lines; failures, diffs, batch
    headers, each host's result and a dry run's report are printed above it."""

    def emit(line: str, kind: str = "progress") -> None:
        if kind == "failure":
            board.log(line, err=True)
        elif quiet or (kind == "change" and board.live and not dry_run):
            return
        else:
            board.log(line)

    def on_host(p: HostProgress) -> None:
        if p.stage == "done":
            board.done(p.node, ok=True, changed=p.changed,
                       summary=f"{p.changed} {'would change' if dry_run else 'changed'}")
        elif p.stage == "failed":
            board.done(p.node, ok=False, changed=p.changed, summary=f"at {p.step}" if p.step else "")
        elif p.stage == "not started":
            board.done(p.node, ok=None, summary="not started")
        else:
            board.update(p.node, step=p.step or p.stage, changed=p.changed)

    return emit, on_host


def _ask_operator(planned: dict[str, int]) -> bool:
    """The hosts and how many operations each would change; yes to go on."""
    total = sum(planned.values())
    if total == 0:
        return True                 # nothing would change: nothing to confirm
    out.print(f"planned: {total} operation(s) to change on {sum(1 for v in planned.values() if v)} of "
              f"{len(planned)} host(s):", markup=False)
    for node, n in planned.items():
        out.print(f"  {node}: {n}", markup=False)
    return click.confirm("apply these changes to the hosts?", default=False)


@click.command("deploy")
@click.option("-i", "--inventory", "inventory", metavar="FILE", default=None,
              help="Region inventory (YAML). Default: $KONTUR_INVENTORY; with --lab the lab's own. "
                   "Never the example region by default.")
@click.option("--lab", is_flag=True, help="Deploy into the running lab (kontur lab up) instead of the real hosts.")
@click.option("--limit", "limit", metavar="NODE", multiple=True,
              help="Deploy only this node (repeatable; several names may also be given comma-separated).")
@click.option("--dry-run", is_flag=True, help="Show what would change, with config diffs (secrets: only 'changed'); change nothing.")
@click.option("-q", "--quiet", is_flag=True, help="Print only failures and the summary line.")
@click.option("--secrets", "secrets_dir", metavar="DIR", default=None,
              help="The region's secrets store (default: KONTUR_SECRETS, else ~/.local/share/kontur/secrets/REGION; "
                   "the lab's own with --lab).")
@click.option("--serial", type=click.IntRange(1), default=None, metavar="N",
              help="Hosts in batches of N (inventory order); a failed host stops the deploy after its batch.")
@click.option("-y", "--yes", is_flag=True,
              help="Do not ask before changing production hosts (the lab is never asked).")
def deploy_command(inventory, lab, limit, dry_run, quiet, secrets_dir, serial, yes):
    """Deploy the region with pyinfra: every node brought to its rendered state.

    \b
    Per node, in order:
      install    package source (the region mirror / the lab repository),
                 packages, directories
      configure  every rendered file with owner and mode; kontur owns
                 /etc/orthanc and the nginx sites: nothing else stays there
      activate   configuration checked (check-orthanc-config, nginx -t,
                 nft -c), then restart or reload only the units whose files
                 changed; services enabled and running; PostgreSQL role and
                 database

    A second deploy with the same inventory changes nothing.  Before anything
    changes, every host's record of the secrets store it was deployed from
    (/etc/kontur/store.json) is compared with this one: another store's CA or
    passwords are refused (exit 2) on every host -- see `kontur secrets`.
    Production hosts: once every host is planned, the hosts and their change
    counts are shown and the deploy asks before changing anything (--yes does
    not ask; without a terminal --yes is required); --serial N deploys N hosts
    at a time and stops after a batch with a failed host.
    Ends with `hosts: H, changed operations: C, failed: F`; exit 1 if a host
    failed (host, step and cause are printed), 2 for invalid input.
    """
    nodes = [n.strip() for item in limit for n in item.split(",") if n.strip()]
    if not inventory and not os.environ.get("KONTUR_INVENTORY"):
        if not lab:
            # other commands read the example region by default; a deploy acts on hospitals
            raise InvalidInput("kontur deploy needs the region's inventory: -i FILE or KONTUR_INVENTORY "
                               "(it never deploys the example region by default)")
        inventory = target.lab_inventory()      # the file the running lab was brought up with
    load_region(inventory)              # an invalid inventory: validate's messages, before anything else

    board = Board([], out=out, err=err, title="deploy" + (" (dry run)" if dry_run else ""),
                  live=False if quiet else None)
    emit, on_host = board_callbacks(board, quiet, dry_run)

    ask = None
    if not lab and not dry_run and not yes:
        if not sys.stdin.isatty():
            raise InvalidInput("a deploy to production hosts asks before it changes them: run it on a terminal, "
                               "or pass --yes (see what would change with --dry-run)")

        def ask(planned: dict[str, int]) -> bool:
            with board.paused():            # the question, and the operator's answer, not under the board
                return _ask_operator(planned)

    where = deploy_target(inventory, lab, secrets_dir)     # the production region or the running lab
    with board:
        result = run_deploy(where, limit=nodes or None, dry_run=dry_run, emit=emit, serial=serial, confirm=ask,
                            on_host=on_host)
    out.print(result.summary() + f" ({result.seconds:.1f} s)", markup=False)
    if result.failed:
        first = result.failed[0]
        names = ", ".join(f"{h.node} ({h.failed_step})" for h in result.failed)
        later = (f"; not started: {', '.join(h.node for h in result.skipped)}" if result.skipped else "")
        raise OperationFailed(f"deploy failed on {len(result.failed)} host(s): {names}{later}",
                              hint=f"fix {first.node} and run kontur deploy again: a re-run only changes what is left")
    return 0
