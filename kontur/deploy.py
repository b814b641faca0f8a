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

Stages (:data:`STAGES`, one method each of the run; on a host see
``deploys/region.py``): connect, store check (every host's record of the
secrets store it was deployed from), prepare (facts are read and operations
planned on every host in parallel), confirm, then execute (each host runs its
own operations in order; a failed host stops at its failed step, the others go
on).  ``on_host`` hears each host's progress (:class:`HostProgress`).

Where it acts is a :class:`kontur.target.Target`; the command line is
``kontur/cli/deploy.py``: nothing here imports a CLI module.
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
from typing import Callable

from . import target
from .errors import InvalidInput, OperationFailed
from .inventory import EXAMPLE_INVENTORY, load
from .paths import ROOT as REPO_ROOT
from .model import Role
from .packages import NODE_PACKAGES
from .target import Target

ROLES = tuple(r.value for r in Role)


# --- the pyinfra inventory ---------------------------------------------------------

def deploy_target(inventory: str | Path | None = None, lab: bool = False,
                  secrets_dir: str | Path | None = None) -> Target:
    """Where the deploy acts (:mod:`kontur.target`): the inventory's region, or
    the running lab (every node of the inventory must have a lab host)."""
    path = Path(inventory or os.environ.get("KONTUR_INVENTORY") or EXAMPLE_INVENTORY).resolve()
    t = target.resolve(load(path), lab=lab, inventory=path, secrets_dir=secrets_dir)
    t.require_hosts()
    return t


def host_groups(inventory: str | Path | Target | None = None, lab: bool = False,
                nodes: list[str] | None = None,
                secrets_dir: str | Path | None = None) -> dict[str, list[tuple[str, dict]]]:
    """pyinfra groups ``{role: [(node, data), ...]}`` for every role: each host's
    data is :meth:`kontur.target.Target.pyinfra_data` (address, SSH settings, the
    target itself for ``deploys/node.py``)."""
    t = inventory if isinstance(inventory, Target) else deploy_target(inventory, lab, secrets_dir)
    groups: dict[str, list[tuple[str, dict]]] = {r: [] for r in ROLES}
    for node, spec in t.region.nodes.items():
        if nodes is None or node in nodes:
            groups[spec.role.value].append((node, t.pyinfra_data(node)))
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


@dataclass(frozen=True)
class HostProgress:
    """One host's progress, as the runner reports it to ``on_host`` (a live
    board, ``kontur/progress.py``, or nothing): the stage it is in, the step it
    just ran, its changed operations so far and its time."""
    node: str
    #: one of STAGES, or "done", "failed", "not started"
    stage: str
    step: str | None = None
    changed: int = 0
    seconds: float = 0.0


#: the runner's stages, in order (dry runs end after "confirm" with a report instead of "execute")
STAGES = ("connect", "store check", "prepare", "confirm", "execute")


class _Run:
    """One deploy: pyinfra's state and every host's result, the stages as methods."""

    def __init__(self, where: Target, limit, dry_run, emit, show_diff, serial, confirm, on_host):
        import gevent
        from pyinfra.api import BaseStateCallback, Config, Inventory, State
        from pyinfra.context import ctx_config, ctx_inventory, ctx_state

        from deploys import node as node_ctx

        self.gevent, self.node_ctx = gevent, node_ctx
        self.where, self.lab = where, where.lab
        self.dry_run, self.emit, self.show_diff, self.serial = dry_run, emit, show_diff, serial
        self.confirm, self.on_host = confirm, on_host
        self.started = time.monotonic()
        groups = host_groups(where)
        all_nodes = [n for hosts in groups.values() for n, _ in hosts]
        if limit:
            unknown = [n for n in limit if n not in all_nodes]
            if unknown:
                raise InvalidInput(f"unknown node {unknown[0]!r} in --limit; expected one of: {', '.join(all_nodes)}")
        self.wanted = [n for n in all_nodes if not limit or n in limit]
        self.results = {n: HostResult(n) for n in self.wanted}

        node_ctx.reset()
        names = [(n, d) for hosts in groups.values() for n, d in hosts]
        self.inv = inv = Inventory((names, {}), **{g: ([n for n, _ in hosts], {}) for g, hosts in groups.items()})
        config = Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=None)
        self.state = state = State(check_for_changes=True)
        state.init(inv, config, initial_limit={inv.get_host(n) for n in self.wanted})
        self.connect_errors: dict[str, str] = {}
        errors = self.connect_errors

        class Callbacks(BaseStateCallback):
            @staticmethod
            def host_connect_error(state, host, error):
                errors[host.name] = str(error)

        state.add_callback_handler(Callbacks())
        ctx_config.set(config)
        ctx_inventory.set(inv)
        ctx_state.set(state)
        self.active: list = []
        self.contexts: dict = {}

    # --- helpers ---

    def progress(self, node: str, stage: str, step: str | None = None) -> None:
        if self.on_host is not None:
            r = self.results[node]
            self.on_host(HostProgress(node, stage, step, r.changed, r.seconds))

    def fail(self, node: str, step: str, cause: str) -> None:
        r = self.results[node]
        if r.failed_step is None:
            r.failed_step, r.cause = step, cause
            self.emit(f"{node}: FAILED at {step}:", "failure")
            for line in cause.splitlines():
                self.emit(f"{node}:   {line}", "failure")
            self.progress(node, "failed", step)

    def drop(self, hosts) -> None:
        from pyinfra.api.exceptions import PyinfraError
        try:
            self.state.fail_hosts(set(hosts))
        except PyinfraError:
            pass  # no host left: the results say why

    def live(self) -> list:
        """The wanted hosts still in the run, in the inventory's order."""
        return [self.inv.get_host(n) for n in self.wanted if self.inv.get_host(n) in self.state.active_hosts]

    def disconnect(self) -> None:
        from pyinfra.api.connect import disconnect_all
        disconnect_all(self.state)

    def step_name(self, h, meta) -> str:
        ctx = self.contexts.get(h.name)
        for s in (ctx.steps if ctx else []):
            if s.meta is meta:
                return s.name
        return "an operation"

    def changing(self, h) -> list:
        ctx = self.contexts[h.name]
        by_meta = {id(s.meta): s for s in ctx.steps}
        return [s for s in ctx.steps if _will_change(s, by_meta)]

    # --- the stages ---

    def connect(self) -> None:
        from pyinfra.api.connect import connect_all
        from pyinfra.api.exceptions import PyinfraError
        from pyinfra.api.state import StateStage
        self.emit(f"connecting to {len(self.wanted)} host(s)" + (" in the lab" if self.lab else ""))
        for n in self.wanted:
            self.progress(n, "connect")
        self.state.set_stage(StateStage.Connect)
        try:
            connect_all(self.state)
        except PyinfraError:
            pass
        for n in self.wanted:
            h = self.inv.get_host(n)
            if not h.connected:
                why = self.connect_errors.get(n)
                self.fail(n, "connect", f"cannot reach {h.data.get('ssh_hostname')} over SSH "
                                        f"as {h.data.get('ssh_user')} (port {h.data.get('ssh_port')})"
                                        + (f": {why}" if why else ""))
                self.drop([h])

    def store_check(self) -> None:
        """Every host's record of the secrets store it was deployed from, read
        before anything changes on any host (kontur.custody)."""
        connected = self.live()
        if not connected:
            return
        refused, unread = _foreign_store(self.state, connected, self.gevent)
        if refused is not None:
            self.disconnect()
            raise refused
        for h, why in unread.items():
            self.fail(h.name, "store check", f"cannot read {h.name}'s record of its secrets store: {why}")
            self.drop([h])

    def prepare(self) -> None:
        """Read facts and plan operations on every host in parallel."""
        from pyinfra.api.state import StateStage
        from pyinfra.context import ctx_host, ctx_state

        from deploys.region import deploy_node
        self.state.set_stage(StateStage.Prepare)
        state = self.state

        def prepare(h) -> bool:
            self.progress(h.name, "prepare")
            with ctx_state.use(state), ctx_host.use(h):
                try:
                    deploy_node()
                except Exception as exc:  # anything, so one broken host does not stop the others
                    # before its first step a host's failure is its rendering (deploys.node.context)
                    current = h.current_deploy_name or "render"
                    self.fail(h.name, f"{current} (planning)", _error_text(exc))
                    return False
            return True

        self.active = self.live()
        greenlets = {self.gevent.spawn(prepare, h): h for h in self.active}
        self.gevent.joinall(list(greenlets))
        self.drop([h for g, h in greenlets.items() if not g.value])
        self.contexts = self.node_ctx.contexts()

    def ask(self) -> None:
        """The operator's yes, with the planned changes per host, before anything changes."""
        if self.confirm is None or self.dry_run:
            return
        planned = {h.name: len(self.changing(h)) for h in self.active if h in self.state.active_hosts}
        if not self.confirm(planned):
            self.disconnect()
            raise Declined("nothing was changed: the deploy was not confirmed")

    def report(self) -> DeployResult:
        """A dry run's end: what would change on every host, with diffs."""
        for h in self.active:
            if h not in self.state.active_hosts:
                continue
            ctx = self.contexts[h.name]
            changing = self.changing(h)
            r = self.results[h.name]
            r.ops, r.changed, r.changes = len(ctx.steps), len(changing), [s.name for s in changing]
            for s in changing:
                self.emit(f"{h.name}: would change: {s.name}", "change")
                if self.show_diff and s.file is not None:
                    for line in _file_diff(self.state, h, s.file):
                        self.emit(f"{h.name}:   {line}", "diff")
            self.emit(f"{h.name}: {len(changing)} operation(s) would change")
            self.progress(h.name, "done")
        self.disconnect()
        return DeployResult(self.results, dry_run=True, seconds=time.monotonic() - self.started)

    def execute(self) -> DeployResult:
        """Every host runs its own operations in order, independently; in
        batches of ``serial`` hosts, stopping after a batch with a failed host."""
        from pyinfra.api.operations import run_host_op
        from pyinfra.api.state import StateStage
        from pyinfra.context import ctx_host, ctx_state
        state = self.state
        state.set_stage(StateStage.Execute)
        state.is_executing = True
        order = state.get_op_order()

        def execute(h) -> None:
            t0 = time.monotonic()
            r = self.results[h.name]
            self.progress(h.name, "execute")
            with ctx_state.use(state), ctx_host.use(h):
                for op_hash in order:
                    if op_hash not in state.ops[h]:
                        continue
                    meta = state.ops[h][op_hash].operation_meta
                    name = self.step_name(h, meta)
                    try:
                        ok = run_host_op(state, h, op_hash)
                    except Exception as exc:  # a lost connection, a bug: this host stops here
                        r.seconds = time.monotonic() - t0
                        self.fail(h.name, name, f"{type(exc).__name__}: {exc}" if str(exc) else
                                  f"{type(exc).__name__} (the connection to the host was lost?)")
                        break
                    r.ops += 1
                    r.seconds = time.monotonic() - t0
                    if not ok:
                        out = meta._combined_output
                        lines = [ln.line for ln in out] if out is not None else []
                        err = [ln.line for ln in out if ln.buffer_name == "stderr"] if out is not None else []
                        self.fail(h.name, name, _explain(_cause(err or lines), self.lab))
                        break
                    if meta.did_change():
                        r.changed += 1
                        r.changes.append(name)
                        self.emit(f"{h.name}: {name}", "change")
                    self.progress(h.name, "execute", name)
            r.seconds = time.monotonic() - t0
            if not r.failed:
                self.emit(f"{h.name}: done, {r.changed} changed ({r.seconds:.1f} s)")
                self.progress(h.name, "done")

        active = [h for h in self.active if h in state.active_hosts]
        size = self.serial or len(active) or 1
        for i in range(0, len(active), size):
            batch = active[i:i + size]
            if self.serial and len(active) > size:
                self.emit(f"batch {i // size + 1} of {-(-len(active) // size)}: {', '.join(h.name for h in batch)}")
            self.gevent.joinall([self.gevent.spawn(execute, h) for h in batch])
            if any(self.results[h.name].failed for h in batch) and i + size < len(active):
                rest = active[i + size:]
                for h in rest:
                    self.results[h.name].skipped = True
                    self.progress(h.name, "not started")
                self.emit(f"stopped after batch {i // size + 1}: a host failed; not started: "
                          f"{', '.join(h.name for h in rest)}", "failure")
                break
        state.set_stage(StateStage.Disconnect)
        self.disconnect()
        return DeployResult(self.results, seconds=time.monotonic() - self.started)


def run_deploy(inventory: str | Path | Target | None = None, *, lab: bool = False, limit: list[str] | None = None,
               dry_run: bool = False, emit: Callable[..., None] = lambda line, kind="progress": print(line),
               show_diff: bool = True, secrets_dir: str | Path | None = None, serial: int | None = None,
               confirm: Callable[[dict[str, int]], bool] | None = None,
               on_host: Callable[[HostProgress], None] | None = None) -> DeployResult:
    """Deploy the region (or ``limit``'s nodes) and return what happened.

    ``inventory``: a :class:`~kontur.target.Target`, or the inventory file (with
    ``lab`` and ``secrets_dir``) to make one from (:func:`deploy_target`).
    Stages (:data:`STAGES`): connect, store check, prepare (facts read and
    operations planned on every host in parallel), confirm, execute (or, with
    ``dry_run``, a report of what would change).
    ``emit(line, kind)``: the printed lines; ``on_host(HostProgress)``: each
    host's stage, step, changed count and time as it goes.
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

    where = inventory if isinstance(inventory, Target) else deploy_target(inventory, lab, secrets_dir)
    run = _Run(where, limit, dry_run, emit, show_diff, serial, confirm, on_host)
    run.connect()
    run.store_check()
    run.prepare()
    run.ask()
    return run.report() if dry_run else run.execute()


def _foreign_store(state, hosts, gevent) -> tuple[InvalidInput | None, dict]:
    """The refusal when a host was deployed from another secrets store than the one
    this deploy would push (:mod:`kontur.custody`), else ``None``; and the hosts
    whose record could not be read, with why."""
    from pyinfra.api.facts import get_fact
    from pyinfra.context import ctx_host, ctx_state
    from pyinfra.facts.files import FileContents

    from . import custody
    from .secrets import SecretStore
    where: Target = hosts[0].data.get("kontur_target")
    store_dir = where.secrets
    ours = SecretStore(store_dir).identity(where.region.region.title)

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
