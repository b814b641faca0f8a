"""The ``kontur`` command line: this package holds the commands (``core``:
validate, show, render; ``deploy``, ``check`` (and audit), ``inventory``,
``users``, ``study``, ``quarantine``); the lab's, the secrets' and the
replication's commands are still ``kontur/lab/cli.py``, ``kontur/secrets_cli.py``
and ``kontur/replication_cli.py``.  Nothing under ``kontur/render/``,
``deploys/`` or the runners imports from here (``tests/unit/test_layout.py``).

Exit codes, for every command: 0 success; 1 the command ran and found
problems, or an operation failed; 2 invalid input or usage.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .. import errors
from ..errors import KonturError
from ..inventory import EXAMPLE_INVENTORY, InventoryError, load

def _width(stream) -> int | None:
    """Tables keep their columns when the output is a pipe or a log file."""
    return None if stream.isatty() or os.environ.get("COLUMNS") else 160


out = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def whole(table, *keep: str, words=()):
    """``table`` with nothing cut short on a narrow terminal (80 columns): a word
    too long for its column folds over lines instead of ending in "…", and the
    ``keep`` columns (node names, addresses, AE titles) keep the width of their
    longest value while the others wrap.  ``words`` (addresses, AE titles: see
    :func:`names_in`) are never split inside free text either: a column whose
    text holds one is at least as wide as the longest such word.  Call it once
    the rows are added."""
    from rich.text import Text

    def plain(cell) -> str:
        if isinstance(cell, Text):
            return cell.plain
        return Text.from_markup(cell).plain if isinstance(cell, str) else ""

    words = [w for w in words if w]
    held: dict[int, int] = {}
    for i, column in enumerate(table.columns):
        column.overflow = "fold"
        cells = [plain(c) for c in column.cells]
        if column.header in keep:
            column.min_width = max([len(str(column.header)), *(Text(c).cell_len for c in cells)])
            column.no_wrap = True
        elif words:
            longest = [Text(t).cell_len for c in cells for t in c.split() if any(w in t for w in words)]
            if longest:
                held[i] = max(longest)
    if held:
        table.__class__ = _WholeTable
        table.kontur_held = held
    return table


class _WholeTable(Table):
    """A table (see :func:`whole`) whose free-text columns holding an address or
    an AE title are, when rich would shrink them narrower, as wide as the
    longest such word -- the other free-text columns wrap more instead.  (rich
    alone shrinks the widest columns alike, and would fold an address in two.)"""

    kontur_held: dict[int, int]

    def __rich_console__(self, console, options):
        widths = self._calculate_column_widths(console, options.update_width(
            options.max_width - self._extra_width))     # rich's own choice (with padding)
        narrow = {i: w for i, w in self.kontur_held.items() if widths[i] < w + self._get_padding_width(i)}
        saved = {i: self.columns[i].width for i in narrow}
        for i, width in narrow.items():
            self.columns[i].width = width
        try:
            yield from super().__rich_console__(console, options)
        finally:
            for i, width in saved.items():
                self.columns[i].width = width


def names_in(region) -> set[str]:
    """What a table must never cut of ``region``: node names, addresses (with
    their ports), AE titles."""
    names: set[str] = set(region.nodes)
    for n, spec in region.nodes.items():
        names.add(spec.address)
        if spec.aet:
            names.add(spec.aet)
    for h in region.hospitals.values():
        for m in h.modalities:
            names |= {m.aet, m.host, f"{m.host}:{m.port}"}
        if h.mis:
            names |= {h.mis.host, f"{h.mis.host}:{h.mis.port}"}
    return names


def inventory_path(value: str | None) -> Path:
    return Path(value or os.environ.get("KONTUR_INVENTORY") or EXAMPLE_INVENTORY)


def inventory_option(f):
    return click.option(
        "-i", "--inventory", "inventory", metavar="FILE", default=None,
        help="Region inventory (YAML). Default: $KONTUR_INVENTORY, else the example region "
             "inventory/example/region.yaml.")(f)


def load_region(value: str | None):
    """Load and validate, turning problems into an InvalidInput error."""
    path = inventory_path(value)
    try:
        return load(path)
    except InventoryError as exc:
        raise InventoryProblems(exc) from None


class InventoryProblems(errors.InvalidInput):
    def __init__(self, exc: InventoryError):
        super().__init__(exc.report())
        self.inventory_error = exc


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="kontur", prog_name="kontur")
def cli():
    """kontur: infrastructure as code for a region's medical-imaging network.

    One inventory file describes the region: the central archive (TsAMI) at the
    regional medical IT centre, a local archive (LAMI) per larger hospital,
    gateways for small hospitals and mobile units, reference centres and a
    research sandbox.  kontur validates it, renders every node's configuration,
    rehearses the region in a lab of real hosts, deploys it with pyinfra and
    checks it.

    \b
    Typical flow:
      kontur validate -i region.yaml        is the region sound?
      kontur show -i region.yaml            nodes, modalities, policies
      kontur render -i region.yaml --out out/
      kontur lab up && kontur deploy --lab  rehearse on this machine
      kontur deploy -i region.yaml          roll out to the hospitals
      kontur check -i region.yaml           on-call: every node green / yellow / red
      kontur audit -i region.yaml --report DIR   auditors: the controls, with evidence
      kontur users issue LOGIN --out DIR    a doctor's browser certificate and password
      kontur research export FEED           de-identified copies for the research sandbox
      kontur secrets export --out FILE      the region's store for a second operator

    Exit codes: 0 success, 1 problems found or an operation failed,
    2 invalid input or usage.
    """


def _register() -> None:
    from . import core  # noqa: F401  (registers the core commands)
    for modname, attr in (("kontur.cli.inventory", "inventory_group"),
                          ("kontur.lab.cli", "lab"),
                          ("kontur.cli.deploy", "deploy_command"),
                          ("kontur.cli.check", "check_command"),
                          ("kontur.cli.check", "audit_command"),
                          ("kontur.replication_cli", "replicate_command"),
                          ("kontur.replication_cli", "replication_group"),
                          ("kontur.cli.quarantine", "quarantine_group"),
                          ("kontur.cli.study", "study_group"),
                          ("kontur.cli.users", "users_group"),
                          ("kontur.cli.research", "research_group"),
                          ("kontur.secrets_cli", "secrets_group")):
        try:
            mod = __import__(modname, fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        cmd = getattr(mod, attr, None)
        if cmd is not None:
            cli.add_command(cmd)


def main(argv: list[str] | None = None) -> int:
    _register()
    try:
        rv = cli.main(args=argv, prog_name="kontur", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("kontur: aborted")
        return errors.EXIT_FAILED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return errors.EXIT_INVALID if isinstance(exc, click.UsageError) else exc.exit_code
    except KonturError as exc:
        err.print(f"kontur: {exc.message}", markup=False)
        if exc.hint:
            err.print(f"  hint: {exc.hint}", markup=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("kontur: interrupted")
        return 130
    return rv if isinstance(rv, int) else errors.EXIT_OK


def entry() -> None:
    sys.exit(main())

