# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur deploy``: the region's nodes brought to their rendered state with pyinfra.

The deploy code lives in ``deploys/`` (one folder per component, entry
``deploys/region.py``) and is the same code plain pyinfra runs::

    pyinfra inventory/region.py deploys/region.py

``kontur deploy`` drives it through pyinfra's Python API in this process
rather than a subprocess of the pyinfra CLI: it gets every operation's result
as data -- changed or not, the step's name, the host's stderr -- so it can
print a per-host progress line, a config diff for ``--dry-run`` without ever
showing a secret, one summary line, and on failure name host, step and cause,
without parsing pyinfra's console output.

Stages (see ``deploys/region.py``): connect, prepare (facts are read and
operations planned on every host in parallel), then execute (each host runs
its own operations in order; a failed host stops at its failed step, the
others go on).
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from .errors import InvalidInput, OperationFailed
from .inventory import load
from .paths import ROOT as REPO_ROOT
from .model import Region, Role
from .packages import NODE_PACKAGES
from .secrets import store_dir

ROLES = tuple(r.value for r in Role)


# --- the pyinfra inventory ---------------------------------------------------------

def host_data(region: Region, node: str, *, inventory: Path, lab: bool, secrets: Path,
              address: str, ssh: dict[str, Any]) -> dict[str, Any]:
    data = {
        "ssh_hostname": address,
        "ssh_port": region.ports(node).ssh,
        "kontur_node": node,
        "kontur_role": region.nodes[node].role.value,
        "kontur_inventory": str(inventory),
        "kontur_lab": lab,
        "kontur_secrets": str(secrets),
    }
    data.update({k: v for k, v in ssh.items() if v not in (None, "")})
    return data


def host_groups(inventory: str | Path | None = None, lab: bool = False,
                nodes: list[str] | None = None,
                secrets_dir: str | Path | None = None) -> dict[str, list[tuple[str, dict]]]:
    """pyinfra groups ``{role: [(node, data), ...]}`` for every role.

    With ``lab`` the hosts are the running lab's: lab addresses, the lab's
    SSH key and known_hosts, the lab's secrets store.
    """
    from .cli import inventory_path
    path = inventory_path(str(inventory) if inventory else None).resolve()
    region = load(path)
    groups: dict[str, list[tuple[str, dict]]] = {r: [] for r in ROLES}
    if lab:
        from .lab.state import require_state
        state = require_state()
        if state.region_name != region.region.name:
            raise InvalidInput(
                f"the running lab is of region {state.region_name!r}, the inventory {path} is of "
                f"region {region.region.name!r}; bring the lab up with this inventory: kontur lab up -i {path}")
        secrets = store_dir(region.region.name, secrets_dir, lab=True)
        missing = [n for n in region.nodes if n not in state.hosts]
        if missing:
            raise InvalidInput(
                f"node(s) {', '.join(missing)} of {path} have no lab host; "
                f"bring them up with: kontur lab up -i {path}")
        ssh = {"ssh_user": state.ssh_user, "ssh_key": state.ssh_key,
               "ssh_known_hosts_file": state.known_hosts, "ssh_strict_host_key_checking": "yes",
               # lab hosts are thrown away: dpkg may skip its fsyncs
               "base_dpkg_unsafe_io": True}
        for node, spec in region.nodes.items():
            h = state.hosts[node]
            data = host_data(region, node, inventory=path, lab=True, secrets=secrets, address=h.address,
                             ssh=dict(ssh, ssh_port=h.ssh_port))
            groups[spec.role.value].append((node, data))
    else:
        secrets = store_dir(region.region.name, secrets_dir)
        from .reach import production
        ssh = production().pyinfra_data()   # never trusts a host key on first sight
        for node, spec in region.nodes.items():
            groups[spec.role.value].append(
                (node, host_data(region, node, inventory=path, lab=False, secrets=secrets,
                                 address=spec.address, ssh=ssh)))
    if nodes is not None:
        groups = {g: [(n, d) for n, d in hosts if n in nodes] for g, hosts in groups.items()}
    return groups


class Declined(OperationFailed):
    """The operator answered no: nothing changed."""


# --- results -------------------------------------------------------------------------

@dataclass
class HostResult:
    node: str
    changed: int = 0
    ops: int = 0
    failed_step: str | None = None
    cause: str | None = None
    changes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: not started: an earlier batch failed (--serial)
    skipped: bool = False

    @property
    def failed(self) -> bool:
        return self.failed_step is not None


@dataclass
class DeployResult:
    hosts: dict[str, HostResult]
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    @property
    def failed(self) -> list[HostResult]:
        return [h for h in self.hosts.values() if h.failed]

    @property
    def skipped(self) -> list[HostResult]:
        return [h for h in self.hosts.values() if h.skipped]

    def summary(self) -> str:
        verb = "operations to change" if self.dry_run else "changed operations"
        text = f"hosts: {len(self.hosts)}, {verb}: {self.changed}, failed: {len(self.failed)}"
        return text + (f", not started: {len(self.skipped)}" if self.skipped else "")


#: stderr lines that never explain a failure
_NOISE = ("debconf: delaying package configuration", "WARNING: apt does not have a stable CLI",
          "debconf: unable to initialize frontend", "debconf: (", "debconf: falling back",
          "dpkg-preconfigure: unable to re-open stdin")


def _cause(lines: list[str], limit: int = 10) -> str:
    useful = [ln.rstrip() for ln in lines if ln.strip() and not ln.strip().startswith(_NOISE)]
    return "\n".join(useful[-limit:]) if useful else "no output"


_MISSING_PACKAGE = re.compile(r"Unable to locate package (\S+)|Package '?([^' ]+)'? has no installation candidate")


def _explain(cause: str, lab: bool) -> str:
    """The cause, with what to do when it is a known one."""
    missing = sorted({a or b for a, b in _MISSING_PACKAGE.findall(cause)})
    if missing:
        where = ("the lab repository (kontur lab mirror shows what it withholds; --full restores it)" if lab
                 else "the region's package mirror (region.package_mirror in the inventory)")
        cause += (f"\nhint: {where} does not offer {', '.join(missing)}; "
                  f"it must carry every package kontur installs ({', '.join(NODE_PACKAGES)}) "
                  "and their dependencies; re-run the deploy once it does")
    return cause


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    inner = getattr(exc, "__cause__", None) or getattr(exc, "__context__", None)
    if inner and str(inner) and str(inner) not in text:
        text += f": {inner}"
    if getattr(exc, "hint", None):          # a KonturError says what to do
        text += f"\nhint: {exc.hint}"
    return text


# --- the runner ------------------------------------------------------------------------

def _quiet_pyinfra() -> None:
    import logging
    log = logging.getLogger("pyinfra")
    log.handlers[:] = [logging.NullHandler()]
    log.propagate = False
    os.environ.setdefault("PYINFRA_PROGRESS", "off")


def run_deploy(inventory: str | None = None, *, lab: bool = False, limit: list[str] | None = None,
               dry_run: bool = False, emit: Callable[..., None] = lambda line, kind="progress": print(line),
               show_diff: bool = True, secrets_dir: str | Path | None = None, serial: int | None = None,
               confirm: Callable[[dict[str, int]], bool] | None = None) -> DeployResult:
    """Deploy the region (or ``limit``'s nodes) and return what happened.

    ``serial``: hosts in batches of that many, in the inventory's order; a batch
    with a failed host stops the deploy (the hosts after it are not started).
    ``confirm``: asked with the planned changes per host once every host is
    planned, before anything changes; False stops there (:class:`Declined`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from gevent import monkey
        if not monkey.is_module_patched("socket"):
            monkey.patch_all()
    _quiet_pyinfra()
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    import gevent
    from pyinfra.api import BaseStateCallback, Config, Inventory, State
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.api.operations import run_host_op
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state

    from deploys import node as node_ctx
    from deploys.region import deploy_node

    started = time.monotonic()
    groups = host_groups(inventory, lab=lab, secrets_dir=secrets_dir)
    all_nodes = [n for hosts in groups.values() for n, _ in hosts]
    if limit:
        unknown = [n for n in limit if n not in all_nodes]
        if unknown:
            raise InvalidInput(f"unknown node {unknown[0]!r} in --limit; expected one of: {', '.join(all_nodes)}")
    wanted = [n for n in all_nodes if not limit or n in limit]
    results = {n: HostResult(n) for n in wanted}

    node_ctx.reset()
    names = [(n, d) for hosts in groups.values() for n, d in hosts]
    inv = Inventory((names, {}), **{g: ([n for n, _ in hosts], {}) for g, hosts in groups.items()})
    config = Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=None)
    state = State(check_for_changes=True)
    state.init(inv, config, initial_limit={inv.get_host(n) for n in wanted})
    connect_errors: dict[str, str] = {}

    class Callbacks(BaseStateCallback):
        @staticmethod
        def host_connect_error(state, host, error):
            connect_errors[host.name] = str(error)

    state.add_callback_handler(Callbacks())
    ctx_config.set(config)
    ctx_inventory.set(inv)
    ctx_state.set(state)

    def fail(node: str, step: str, cause: str) -> None:
        r = results[node]
        if r.failed_step is None:
            r.failed_step, r.cause = step, cause
            emit(f"{node}: FAILED at {step}:", "failure")
            for line in cause.splitlines():
                emit(f"{node}:   {line}", "failure")

    def drop(hosts) -> None:
        try:
            state.fail_hosts(set(hosts))
        except PyinfraError:
            pass  # no host left: the results say why

    # connect
    emit(f"connecting to {len(wanted)} host(s)" + (" in the lab" if lab else ""))
    state.set_stage(StateStage.Connect)
    try:
        connect_all(state)
    except PyinfraError:
        pass
    for n in wanted:
        h = inv.get_host(n)
        if not h.connected:
            why = connect_errors.get(n)
            fail(n, "connect", f"cannot reach {h.data.get('ssh_hostname')} over SSH "
                               f"as {h.data.get('ssh_user')} (port {h.data.get('ssh_port')})"
                               + (f": {why}" if why else ""))
            drop([h])

    # the secrets store: every host's record of the store it was deployed from,
    # read before anything changes on any host (kontur.custody)
    connected = [inv.get_host(n) for n in wanted if inv.get_host(n) in state.active_hosts]
    if connected:
        refused, unread = _foreign_store(state, connected, gevent)
        if refused is not None:
            disconnect_all(state)
            raise refused
        for h, why in unread.items():
            fail(h.name, "store check", f"cannot read {h.name}'s record of its secrets store: {why}")
            drop([h])

    # prepare: read facts and plan operations on every host in parallel
    state.set_stage(StateStage.Prepare)

    def prepare(h) -> bool:
        with ctx_state.use(state), ctx_host.use(h):
            try:
                deploy_node()
            except Exception as exc:  # anything, so one broken host does not stop the others
                # before its first step a host's failure is its rendering (deploys.node.context)
                current = h.current_deploy_name or "render"
                fail(h.name, f"{current} (planning)", _error_text(exc))
                return False
        return True

    active = [inv.get_host(n) for n in wanted if inv.get_host(n) in state.active_hosts]
    greenlets = {gevent.spawn(prepare, h): h for h in active}
    gevent.joinall(list(greenlets))
    drop([h for g, h in greenlets.items() if not g.value])
    contexts = node_ctx.contexts()

    def step_name(h, meta) -> str:
        ctx = contexts.get(h.name)
        for s in (ctx.steps if ctx else []):
            if s.meta is meta:
                return s.name
        return "an operation"

    if confirm is not None and not dry_run:
        planned = {}
        for h in active:
            if h in state.active_hosts:
                by_meta = {id(st.meta): st for st in contexts[h.name].steps}
                planned[h.name] = sum(1 for st in contexts[h.name].steps if _will_change(st, by_meta))
        if not confirm(planned):
            disconnect_all(state)
            raise Declined("nothing was changed: the deploy was not confirmed")

    if dry_run:
        for h in active:
            if h not in state.active_hosts:
                continue
            ctx = contexts[h.name]
            by_meta = {id(s.meta): s for s in ctx.steps}
            changing = [s for s in ctx.steps if _will_change(s, by_meta)]
            results[h.name].ops = len(ctx.steps)
            results[h.name].changed = len(changing)
            results[h.name].changes = [s.name for s in changing]
            for s in changing:
                emit(f"{h.name}: would change: {s.name}", "change")
                if show_diff and s.file is not None:
                    for line in _file_diff(state, h, s.file):
                        emit(f"{h.name}:   {line}", "diff")
            emit(f"{h.name}: {len(changing)} operation(s) would change")
        disconnect_all(state)
        return DeployResult(results, dry_run=True, seconds=time.monotonic() - started)

    # execute: every host runs its own operations in order, independently
    state.set_stage(StateStage.Execute)
    state.is_executing = True
    order = state.get_op_order()

    def execute(h) -> None:
        t0 = time.monotonic()
        r = results[h.name]
        with ctx_state.use(state), ctx_host.use(h):
            for op_hash in order:
                if op_hash not in state.ops[h]:
                    continue
                meta = state.ops[h][op_hash].operation_meta
                name = step_name(h, meta)
                try:
                    ok = run_host_op(state, h, op_hash)
                except Exception as exc:  # a lost connection, a bug: this host stops here
                    fail(h.name, name, f"{type(exc).__name__}: {exc}" if str(exc) else
                         f"{type(exc).__name__} (the connection to the host was lost?)")
                    break
                r.ops += 1
                if not ok:
                    out = meta._combined_output
                    lines = [ln.line for ln in out] if out is not None else []
                    err = [ln.line for ln in out if ln.buffer_name == "stderr"] if out is not None else []
                    fail(h.name, name, _explain(_cause(err or lines), lab))
                    break
                if meta.did_change():
                    r.changed += 1
                    r.changes.append(name)
                    emit(f"{h.name}: {name}", "change")
        r.seconds = time.monotonic() - t0
        if not r.failed:
            emit(f"{h.name}: done, {r.changed} changed ({r.seconds:.1f} s)")

    active = [h for h in active if h in state.active_hosts]
    size = serial or len(active) or 1
    for i in range(0, len(active), size):
        batch = active[i:i + size]
        if serial and len(active) > size:
            emit(f"batch {i // size + 1} of {-(-len(active) // size)}: {', '.join(h.name for h in batch)}")
        gevent.joinall([gevent.spawn(execute, h) for h in batch])
        if any(results[h.name].failed for h in batch) and i + size < len(active):
            rest = active[i + size:]
            for h in rest:
                results[h.name].skipped = True
            emit(f"stopped after batch {i // size + 1}: a host failed; not started: "
                 f"{', '.join(h.name for h in rest)}", "failure")
            break
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)
    return DeployResult(results, seconds=time.monotonic() - started)


def _foreign_store(state, hosts, gevent) -> tuple[InvalidInput | None, dict]:
    """The refusal when a host was deployed from another secrets store than the one
    this deploy would push (:mod:`kontur.custody`), else ``None``; and the hosts
    whose record could not be read, with why."""
    from pyinfra.api.facts import get_fact
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra.facts.files import FileContents

    from . import custody
    from .secrets import SecretStore
    data = hosts[0].data
    region = load(Path(data.get("kontur_inventory")))
    store_dir = Path(data.get("kontur_secrets"))
    ours = SecretStore(store_dir).identity(region.region.title)

    def read(h):
        try:
            with ctx_state.use(state), ctx_host.use(h):
                lines = get_fact(state, h, FileContents, kwargs={"path": custody.STORE_FILE})
                ca = None if lines is not None else get_fact(state, h, FileContents,
                                                             kwargs={"path": custody.CA_FILE})
        except Exception as exc:  # noqa: BLE001 - a lost connection: that host fails, it is not read as "no record"
            return h, f"{type(exc).__name__}: {exc}"
        return h, custody.compare(h.name, None if lines is None else "\n".join(lines), ours,
                                  None if ca is None else "\n".join(ca) + "\n")

    greenlets = [gevent.spawn(read, h) for h in hosts]
    gevent.joinall(greenlets)
    answers = [g.value for g in greenlets]
    unread = {h: why for h, why in answers if isinstance(why, str)}
    found = [m for _, m in answers if isinstance(m, custody.Mismatch)]
    return (custody.refusal(found, store_dir) if found else None), unread


def _will_change(step, steps: dict) -> bool:
    """In a dry run: would this step change?  A restart, reload or package
    list update waits on other steps (which may wait on others): it happens
    when one of them changes."""
    seen: set[int] = set()

    def changes(meta) -> bool:
        if id(meta) in seen:
            return False
        seen.add(id(meta))
        if not meta.will_change:
            return False
        s = steps.get(id(meta))
        if s is not None and s.gates is not None:
            return any(changes(g) for g in s.gates)
        return True

    return changes(step.meta)


def _file_diff(state, host, f) -> list[str]:
    """A unified diff of ``f`` against the host's file; for a secret only "changed"."""
    from pyinfra.api.facts import get_fact
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra.facts.files import FileContents

    if f.secret:
        return ["(secret: content not shown) changed"]
    with ctx_state.use(state), ctx_host.use(host):
        current = get_fact(state, host, FileContents, kwargs={"path": f.path})
    if current is None:
        return [f"(new file, {len(f.content.splitlines())} lines)"]
    try:
        desired = f.content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return ["(binary file) changed"]
    diff = list(difflib.unified_diff(current, desired, f"{f.path} (host)", f"{f.path} (rendered)", lineterm="", n=1))
    return diff or ["(owner or mode) changed"]


# --- the command ------------------------------------------------------------------------

def _ask_operator(planned: dict[str, int]) -> bool:
    """The hosts and how many operations each would change; yes to go on."""
    from .cli import out
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
    from .cli import err, load_region, out

    nodes = [n.strip() for item in limit for n in item.split(",") if n.strip()]
    if not inventory and not os.environ.get("KONTUR_INVENTORY"):
        if not lab:
            # other commands read the example region by default; a deploy acts on hospitals
            raise InvalidInput("kontur deploy needs the region's inventory: -i FILE or KONTUR_INVENTORY "
                               "(it never deploys the example region by default)")
        from .lab.state import require_state
        inventory = require_state().inventory       # the file the running lab was brought up with
    load_region(inventory)              # an invalid inventory: validate's messages, before anything else

    def emit(line: str, kind: str = "progress") -> None:
        if quiet and kind != "failure":
            return
        (err if kind == "failure" else out).print(line, markup=False, highlight=False)

    ask = None
    if not lab and not dry_run and not yes:
        if not sys.stdin.isatty():
            raise InvalidInput("a deploy to production hosts asks before it changes them: run it on a terminal, "
                               "or pass --yes (see what would change with --dry-run)")
        ask = _ask_operator

    result = run_deploy(inventory, lab=lab, limit=nodes or None, dry_run=dry_run, emit=emit, secrets_dir=secrets_dir,
                        serial=serial, confirm=ask)
    out.print(result.summary() + f" ({result.seconds:.1f} s)", markup=False)
    if result.failed:
        first = result.failed[0]
        names = ", ".join(f"{h.node} ({h.failed_step})" for h in result.failed)
        later = (f"; not started: {', '.join(h.node for h in result.skipped)}" if result.skipped else "")
        raise OperationFailed(f"deploy failed on {len(result.failed)} host(s): {names}{later}",
                              hint=f"fix {first.node} and run kontur deploy again: a re-run only changes what is left")
    return 0
