# SPDX-License-Identifier: AGPL-3.0-or-later
"""Base: what every node gets, and the helpers the component deploys share.

install    the package source (the region's mirror, or the lab's signed
           repository; every other source removed), the bundle's packages
           (service starts held back while they install, so Debian's default
           configuration never runs), the bundle's directories
configure  the files no component claims (TLS material, /etc/kontur)

Shared helpers: :func:`upload` (files with owner and mode, recording which
units each upload restarts or reloads), :func:`remove_unowned` (kontur owns a
directory: what the bundle does not name goes) and :func:`activate_unit`
(check the configuration, restart or reload only when a file naming the unit
changed, then make sure it is enabled and running).
"""
from __future__ import annotations

import hashlib
import io
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, deploy, operation
from pyinfra.operations import apt, files
from pyinfra.operations.util import any_changed

from kontur.render.bundle import RenderedFile

from ..node import NodeContext, context
from .facts import DirectoryEntries, InstalledPackages, PathStates, UnitStates

#: documented defaults of the base deploy (host data may override them)
DEFAULTS = {
    # install without Recommends: only what the bundle names and its dependencies
    "base_no_recommends": True,
    # seconds a service gets to answer after a (re)start
    "base_ready_timeout": 90,
    # dpkg without fsync: only for hosts that are thrown away (the lab sets it)
    "base_dpkg_unsafe_io": False,
}

POLICY_RC_D = "/usr/sbin/policy-rc.d"
#: prefixes of files a component deploy claims; base uploads the rest
COMPONENT_PREFIXES = ("/etc/apt/", "/etc/orthanc/", "/etc/systemd/system/orthanc.service.d/",
                      "/usr/lib/kontur/plugins/", "/usr/lib/kontur/lua/", "/usr/lib/kontur/bin/",
                      "/etc/kontur/policy.json", "/etc/nginx/", "/etc/nftables.conf", "/etc/postgresql/",
                      "/usr/lib/kontur/services/", "/usr/lib/kontur/wheels/", "/etc/kontur/hl7.json",
                      "/etc/systemd/system/kontur-hl7.service", "/etc/kontur/research.json",
                      "/etc/systemd/system/kontur-research.service", "/etc/systemd/system/kontur-research.timer")


# --- operations of our own ------------------------------------------------------

@operation()
def remove_unowned(directory: str, glob: str, keep: list[str], fresh: bool = False):
    """Remove entries of ``directory`` matching ``glob`` that are not in ``keep``.

    + fresh: packages are installed in this same run, so what they bring is not
      visible yet: decide on the host when the operation runs.
    """
    if fresh:
        cond = " ".join(f"! -name {shlex.quote(k)}" for k in keep)
        yield (f"find {shlex.quote(directory)} -mindepth 1 -maxdepth 1 ! -type d -name {shlex.quote(glob)} "
               f"{cond} -print -delete 2>/dev/null || true")
        return
    extra = [n for n in host.get_fact(DirectoryEntries, path=directory, glob=glob) if n not in keep]
    if extra:
        yield StringCommand("rm", "-f", *[shlex.quote(f"{directory.rstrip('/')}/{n}") for n in extra])
    else:
        host.noop(f"{directory} holds only what the bundle names")


@operation()
def put_file(path: str, content: bytes, mode: str, user: str, group: str, current: dict | None,
             secret: bool = False):
    """``path`` holds ``content`` with ``user``:``group`` and ``mode``.

    + current: the path's state read once per host (:class:`PathStates`),
      so a host with nothing to change costs no command per file
    + secret: a new file is created empty with its final mode first, so the
      content is never readable by others, not even for a moment
    """
    want = int(mode, 8)
    digest = hashlib.sha1(content).hexdigest()
    if current is None or current.get("type") != "file":
        yield StringCommand("mkdir", "-p", QuoteString(path.rsplit("/", 1)[0] or "/"))
        if secret:
            yield StringCommand("install", "-m", f"{want:04o}", "-o", user, "-g", group, "/dev/null",
                                QuoteString(path))
        yield FileUploadCommand(io.BytesIO(content), path)
        yield StringCommand("chown", f"{user}:{group}", QuoteString(path))
        yield StringCommand("chmod", f"{want:04o}", QuoteString(path))
        return
    if current.get("sha1") != digest:
        yield FileUploadCommand(io.BytesIO(content), path)
    if (current.get("user"), current.get("group")) != (user, group):
        yield StringCommand("chown", f"{user}:{group}", QuoteString(path))
    if current.get("mode") != want:
        yield StringCommand("chmod", f"{want:04o}", QuoteString(path))


@operation()
def directory(path: str, mode: str, user: str, group: str, current: dict | None):
    """``path`` is a directory with ``user``:``group`` and ``mode``."""
    want = int(mode, 8)
    if current is None or current.get("type") != "dir":
        yield StringCommand("mkdir", "-p", QuoteString(path))
        yield StringCommand("chown", f"{user}:{group}", QuoteString(path))
        yield StringCommand("chmod", f"{want:04o}", QuoteString(path))
        return
    if (current.get("user"), current.get("group")) != (user, group):
        yield StringCommand("chown", f"{user}:{group}", QuoteString(path))
    if current.get("mode") != want:
        yield StringCommand("chmod", f"{want:04o}", QuoteString(path))


def _diagnose(unit: str, log: str | None) -> str:
    """Shell that prints why ``unit`` failed, to stderr: its state, its last
    journal lines, then ``log`` (a command printing the service's own log
    lines, for services that log to files)."""
    cmd = (f"systemctl show -p ActiveState -p SubState -p Result {unit} 2>&1 | tr '\\n' ' '; echo; "
           f"journalctl -u {unit} -n 5 --no-pager -o cat 2>/dev/null | grep -v -e '^Failed to dump process list' -e 'Failed to kill control group'")
    if log:
        cmd += f"; {log}"
    return "{ " + cmd + "; } >&2"


def _ready(ready: str | None, unit: str, timeout: int) -> str:
    """Shell that waits until ``ready`` succeeds while ``unit`` stays active;
    false (with a message) when it does not."""
    if not ready:
        return "true"
    return (f"i=0; ok=1; until {ready}; do i=$((i+1)); "
            f"if [ $i -ge {timeout * 2} ] || ! systemctl is-active -q {unit}; then ok=0; break; fi; "
            f"sleep 0.5; done; [ $ok = 1 ] || {{ echo '{unit} did not become ready' >&2; false; }}")


@operation()
def unit_running(unit: str, check: str | None = None, ready: str | None = None, log: str | None = None,
                 timeout: int = 90, enable: bool = True, current: dict | None = None):
    """``unit`` enabled and running; a start is preceded by ``check`` and
    followed by ``ready``; on failure the unit's status and log go to stderr.

    + enable: also enable it at boot (off for units started by another unit)
    + current: the unit's state read once per host (:class:`UnitStates`)
    """
    state = current if current is not None else host.get_fact(UnitStates, units=[unit]).get(unit, {})
    if enable and not state.get("enabled"):
        yield f"systemctl enable -q {unit}"
    if not state.get("active"):
        start = f"timeout {timeout} systemctl start {unit}"
        if check:
            start = f"{check} && {start}"
        yield f"{{ {start} && {_ready(ready, unit, timeout)}; }} || {{ rc=$?; {_diagnose(unit, log)}; exit $rc; }}"
    elif state.get("enabled") or not enable:
        host.noop(f"{unit} is enabled and running")


@operation()
def unit_restart(unit: str, check: str | None = None, ready: str | None = None, log: str | None = None,
                 reload: bool = False, timeout: int = 90):
    """Check the configuration, then restart (or reload) ``unit``: a failed
    check leaves the running service untouched."""
    verb = "reload-or-restart" if reload else "restart"
    cmd = f"timeout {timeout} systemctl {verb} {unit}"
    if check:
        cmd = f"{check} && {cmd}"
    yield f"{{ {cmd} && {_ready(ready, unit, timeout)}; }} || {{ rc=$?; {_diagnose(unit, log)}; exit $rc; }}"


# --- helpers for component deploys ----------------------------------------------

def upload(ctx: NodeContext, component: str, items: list[RenderedFile]) -> list:
    """Upload ``items`` with their owner, group and mode; remember which units
    each upload restarts or reloads."""
    metas = []
    states = path_states(ctx)
    for f in items:
        name = f"{component}: {f.path}"
        meta = put_file(name=name, path=f.path, content=f.content, mode=f.mode, user=f.owner, group=f.group,
                        current=states.get(f.path), secret=f.secret)
        metas.append(ctx.record(name, meta, f))
    return metas


def path_states(ctx: NodeContext) -> dict:
    """Every bundle file and directory as the host has it, read once (before
    anything changes) and reused by the operations at execution."""
    if ctx.paths is None:
        paths = [f.path for f in ctx.bundle.files] + [f.path for f in ctx.apt.files] + \
                [d.path for d in ctx.bundle.directories]
        ctx.paths = host.get_fact(PathStates, paths=sorted(set(paths)))
    return ctx.paths


def cleanup_owned(ctx: NodeContext, component: str, owned: dict[str, str], names: list[str]) -> None:
    """For each directory kontur owns, remove what the bundle does not name.
    A removal counts as a change of every unit the directory's files touch."""
    for directory, glob in owned.items():
        keep = sorted({p.rsplit("/", 1)[1] for p in names if p.rsplit("/", 1)[0] == directory.rstrip("/")})
        name = f"{component}: only kontur's files in {directory}"
        meta = remove_unowned(name=name, directory=directory, glob=glob, keep=keep, fresh=bool(ctx.installing))
        ctx.record(name, meta)
        parent = directory.rstrip("/").rsplit("/", 1)[0] + "/"
        related = [f for f in ctx.bundle.files if f.path.startswith(directory.rstrip("/") + "/")] or \
                  [f for f in ctx.bundle.files if f.path.startswith(parent)]
        for f in related:
            for unit in f.restarts:
                ctx.restarts.setdefault(unit, []).append(meta)
            for unit in f.reloads:
                ctx.reloads.setdefault(unit, []).append(meta)


def activate_unit(ctx: NodeContext, component: str, unit: str, *, check: str | None = None,
                  ready: str | None = None, log: str | None = None, restart_unit: str | None = None,
                  enable: bool = True) -> list:
    """Restart or reload ``unit`` only if a file naming it changed (and it was
    already running: a stopped unit simply starts with the new files), then
    make sure it is enabled and running.  Returns the operations that restart
    or start it (a dependent unit restarts when one of them changed)."""
    timeout = int(host.data.get("base_ready_timeout", DEFAULTS["base_ready_timeout"]))
    target = restart_unit or unit
    current = unit_states(ctx, target)
    running = current.get("active", False)
    restart_ops = ctx.restarts.get(unit, [])
    reload_ops = ctx.reloads.get(unit, [])
    started = []
    if running and restart_ops:
        name = f"{component}: check the configuration and restart {target}"
        started.append(ctx.record(name, unit_restart(name=name, unit=target, check=check, ready=ready, log=log,
                                      timeout=timeout, _if=any_changed(*restart_ops)), gates=restart_ops))
    if running and reload_ops:
        changed_reload = any_changed(*reload_ops)
        changed_restart = any_changed(*restart_ops) if restart_ops else (lambda: False)
        name = f"{component}: check the configuration and reload {target}"
        ctx.record(name, unit_restart(name=name, unit=target, check=check, ready=ready, log=log, reload=True,
                                      timeout=timeout, _if=lambda: changed_reload() and not changed_restart()),
                   gates=reload_ops)
    name = f"{component}: {target} {'enabled and ' if enable else ''}running"
    started.append(ctx.record(name, unit_running(name=name, unit=target, check=check, ready=ready, log=log,
                                                 timeout=timeout, enable=enable, current=current)))
    return started


def unit_states(ctx: NodeContext, unit: str) -> dict:
    """``unit`` as the host had it before this run; every unit the node runs
    is read in one command on first use."""
    if ctx.units is None or unit not in ctx.units:
        units = sorted(set(ctx.bundle.services) | set(ctx.extra_units) | {unit})
        ctx.units = {u: {} for u in units} | host.get_fact(UnitStates, units=units)
    return ctx.units.get(unit, {})


# --- the base deploy ---------------------------------------------------------------

@deploy("Base: install", data_defaults=DEFAULTS)
def install() -> None:
    ctx = context()
    bundle = ctx.bundle

    # package source: only the region's mirror (or the lab's repository)
    source_ops = upload(ctx, "Base", ctx.apt.files)
    if ctx.apt.files:
        cleanup_owned(ctx, "Base", ctx.apt.owned, [f.path for f in ctx.apt.files])
        source_ops += [s.meta for s in ctx.steps if s.name.startswith("Base: only kontur's files in /etc/apt")]

    installed = host.get_fact(InstalledPackages)
    ctx.installing = [p for p in bundle.packages if p not in installed]
    name = "Base: update the package lists"
    if ctx.installing:
        ctx.record(name, apt.update(name=name))
    elif source_ops:
        ctx.record(name, apt.update(name=name, _if=any_changed(*source_ops)), gates=source_ops)

    if ctx.installing:
        # Debian's postinst scripts start services with Debian's default
        # configuration; hold every start back until kontur's files are in place
        name = "Base: hold service starts while packages install"
        ctx.record(name, files.put(name=name, src=io.BytesIO(b"#!/bin/sh\nexit 101\n"),
                                   dest=POLICY_RC_D, mode="0755"))
        name = "Base: install packages"
        unsafe = bool(host.data.get("base_dpkg_unsafe_io", False))
        ctx.record(name, apt.packages(name=name, packages=ctx.installing,
                                      no_recommends=bool(host.data.get("base_no_recommends", True)),
                                      extra_install_args="-o Dpkg::Options::=--force-unsafe-io" if unsafe else None))
    name = "Base: allow service starts again"
    ctx.record(name, files.file(name=name, path=POLICY_RC_D, present=False))

    states = path_states(ctx)
    for d in bundle.directories:
        name = f"Base: directory {d.path}"
        ctx.record(name, directory(name=name, path=d.path, user=d.owner, group=d.group, mode=d.mode,
                                   current=states.get(d.path)))


@deploy("Base: configure", data_defaults=DEFAULTS)
def configure() -> None:
    ctx = context()
    rest = [f for f in ctx.bundle.files if not f.path.startswith(COMPONENT_PREFIXES)]
    upload(ctx, "Base", rest)
