# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur secrets``: the region's secrets store -- which one it is, and moving
it between the operators' machines as one encrypted file (kontur.custody)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from . import custody
from .cli import CONTEXT, inventory_option, load_region, out
from .errors import InvalidInput
from .files import atomic_write
from .secrets import SecretStore, store_dir


def _directory(region, secrets_dir: str | None, lab: bool) -> Path:
    return store_dir(region.region.name, secrets_dir, lab=lab)


def _passphrase(passphrase_file: str | None, *, confirm: bool) -> str:
    """From FILE (its first line), else asked twice on the terminal; never from the command line."""
    if passphrase_file:
        try:
            text = Path(passphrase_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"--passphrase-file {passphrase_file}: {exc.strerror}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise InvalidInput(f"--passphrase-file {passphrase_file}: empty; expected the passphrase on its first line")
        return lines[0]
    return click.prompt("passphrase", hide_input=True, confirmation_prompt=confirm)


_store_options = [
    inventory_option,
    click.option("--lab", is_flag=True, help="The running lab's store."),
    click.option("--secrets", "secrets_dir", metavar="DIR", default=None,
                 help="The store's directory (default: $KONTUR_SECRETS, else "
                      "~/.local/share/kontur/secrets/REGION)."),
]


def store_options(f):
    for option in reversed(_store_options):
        f = option(f)
    return f


@click.group("secrets", context_settings=CONTEXT)
def secrets_group():
    """The region's secrets store: the regional CA and every password.

    Every node records the store it was deployed from; `kontur deploy` refuses
    another one.  A second operator's machine gets the store with `export` on
    the first and `import` on the second -- one file, encrypted with a
    passphrase (scrypt + Fernet, from the `cryptography` library).
    """


@secrets_group.command("show")
@store_options
def show_command(inventory, lab, secrets_dir):
    """Which store this is: its directory, its CA's fingerprint, its id -- what
    every node it was deployed to records in /etc/kontur/store.json."""
    region = load_region(inventory)
    directory = _directory(region, secrets_dir, lab)
    if not directory.is_dir():
        raise InvalidInput(f"no secrets store at {directory}; import the region's (`kontur secrets import`) "
                           f"or pass --secrets DIR")
    from .rotation import PHASE_TRUST, changeover
    store = SecretStore(directory, create=False)
    identity = store.identity(region.region.title)
    c = changeover(store)
    out.print(f"store: {directory}\nregion: {region.region.name}\nCA SHA-256: {identity.ca_sha256}\n"
              f"store id: {identity.store_id}"
              + (f"\nCA change-over: phase {1 if c.phase == PHASE_TRUST else 2} of 3 since {c.started_at} "
                 f"(`kontur secrets rotate ca --status`)" if c else ""), markup=False)
    return 0


@secrets_group.command("export")
@store_options
@click.option("--out", "out_file", metavar="FILE", required=True, help="The encrypted file to write (mode 0600).")
@click.option("--passphrase-file", metavar="FILE", default=None,
              help="Read the passphrase from FILE's first line (else it is asked twice).")
def export_command(inventory, lab, secrets_dir, out_file, passphrase_file):
    """The whole store as one encrypted file for another operator's machine."""
    region = load_region(inventory)
    directory = _directory(region, secrets_dir, lab)
    if not directory.is_dir():
        raise InvalidInput(f"no secrets store at {directory}; nothing to export")
    store = SecretStore(directory, create=False)
    data = custody.export_store(store, region.region.name, region.region.title,
                                _passphrase(passphrase_file, confirm=True))
    target = Path(out_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, data, 0o600)
    identity = store.identity(region.region.title)
    out.print(f"exported {directory} to {target} (CA SHA-256 {identity.ca_sha256[:23]}…, store id "
              f"{identity.store_id}); move it to the other machine and run `kontur secrets import`", markup=False)
    return 0


@secrets_group.command("import")
@store_options
@click.argument("file", metavar="FILE")
@click.option("--passphrase-file", metavar="FILE", default=None,
              help="Read the passphrase from FILE's first line (else it is asked).")
@click.option("--replace", is_flag=True,
              help="A different store already here is moved aside to DIR.replaced-TIME (never deleted).")
def import_command(inventory, lab, secrets_dir, file, passphrase_file, replace):
    """Install a store exported on another machine (`kontur secrets export`)."""
    region = load_region(inventory)
    directory = _directory(region, secrets_dir, lab)
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{file}: {exc.strerror}") from None
    identity, kept = custody.import_store(data, _passphrase(passphrase_file, confirm=False), file, directory,
                                          region.region.name, replace=replace)
    if kept is not None:
        out.print(f"the store that was at {directory} is kept at {kept}", markup=False)
    out.print(f"imported into {directory} (CA SHA-256 {identity.ca_sha256[:23]}…, store id {identity.store_id})",
              markup=False)
    os.sync()
    return 0


def _open_store(region, secrets_dir, lab) -> SecretStore:
    directory = _directory(region, secrets_dir, lab)
    if not directory.is_dir():
        raise InvalidInput(f"no secrets store at {directory}; import the region's (`kontur secrets import`) "
                           f"or pass --secrets DIR")
    return SecretStore(directory, create=False)


_reason_option = click.option("--reason", metavar="TEXT", default=None,
                              help="Who asked for it and why (required; kept in the audit log).")


@secrets_group.group("rotate", context_settings=CONTEXT)
def rotate_group():
    """Change a secret on purpose: a password, a node's certificate, the CA.

    Each rotation is kept in the store's audit log (`kontur secrets log`):
    when, who, what, why -- never a value.  The next `kontur deploy` pushes it.
    """


@rotate_group.command("password")
@store_options
@click.argument("key", metavar="KEY", required=False)
@_reason_option
@click.option("--list", "list_keys", is_flag=True, help="List the store's passwords (their keys, not values).")
def rotate_password_command(inventory, lab, secrets_dir, key, reason, list_keys):
    """A new random value for the password KEY (e.g. nodes/tsami/kontur-service,
    links/onco-lami->tsami, users/ivanova)."""
    from . import rotation
    region = load_region(inventory)
    store = _open_store(region, secrets_dir, lab)
    if list_keys or not key:
        if not key and not list_keys:
            raise InvalidInput("name the password to rotate (KEY); the passwords of this store are:\n  "
                               + "\n  ".join(rotation.rotatable(store)))
        out.print("\n".join(rotation.rotatable(store)), markup=False)
        return 0
    rotation.rotate_password(store, key, reason)
    out.print(f"rotated {key}; `kontur deploy{' --lab' if lab else ''}` pushes it to "
              f"{_where(region, key)}", markup=False)
    return 0


def _where(region, key: str) -> str:
    """Which nodes use ``key`` (those whose rendering holds it)."""
    parts = key.split("/")
    if parts[0] == "nodes" and len(parts) > 1:
        return parts[1]
    if parts[0] == "links" and "->" in key:
        return " and ".join(key.split("/", 1)[1].split("->"))
    if parts[0] == "users" and len(parts) > 1:
        nodes = [n for n in region.nodes if any(u.login == parts[1] for u in region.users_of(n))]
        return ", ".join(nodes) or "no node (the user has no archive)"
    return "the nodes that use it"


@rotate_group.command("cert")
@store_options
@click.argument("node", metavar="NODE")
@_reason_option
def rotate_cert_command(inventory, lab, secrets_dir, node, reason):
    """A new key and certificate for NODE from the current CA."""
    from . import rotation
    region = load_region(inventory)
    store = _open_store(region, secrets_dir, lab)
    entry = rotation.rotate_cert(store, region, node, reason)
    out.print(f"new certificate for {node} (serial {entry['new_serial']}); `kontur deploy{' --lab' if lab else ''}"
              f" --limit {node}` pushes it", markup=False)
    return 0


@rotate_group.command("ca")
@store_options
@_reason_option
@click.option("--continue", "phase2", is_flag=True,
              help="Phase 2: once every node trusts the new CA, issue every certificate from it.")
@click.option("--finish", "phase3", is_flag=True,
              help="Phase 3: once every node has its certificate from the new CA, stop trusting the old one.")
@click.option("--force", is_flag=True,
              help="Go on although nodes are not ready (named in the audit log); their links break.")
@click.option("--status", is_flag=True, help="Show the change-over's phase and which nodes are ready.")
def rotate_ca_command(inventory, lab, secrets_dir, reason, phase2, phase3, force, status):
    """Replace the regional CA in three phases, a deploy of every node after each:
    1. (no option) a new CA, trusted beside the old one;
    2. --continue: every certificate issued anew from the new CA;
    3. --finish: the old CA no longer trusted."""
    from . import rotation
    if phase2 and phase3:
        raise InvalidInput("--continue and --finish are two phases: one at a time")
    region = load_region(inventory)
    store = _open_store(region, secrets_dir, lab)
    title = region.region.title
    deploy = f"`kontur deploy{' --lab' if lab else ''}`"
    if status:
        c = rotation.changeover(store)
        if c is None:
            out.print("no CA change-over under way", markup=False)
            return 0
        waiting = rotation.not_ready(store, _reachable(region, lab))
        out.print(f"phase {1 if c.phase == rotation.PHASE_TRUST else 2} of 3 since {c.started_at}\n"
                  f"old CA SHA-256 {c.old}\nnew CA SHA-256 {c.new}\n"
                  + ("every node is ready for the next phase" if not waiting else
                     "not ready:\n" + "\n".join(f"  {n}: {why}" for n, why in waiting.items())), markup=False)
        return 0
    if not phase2 and not phase3:
        entry = rotation.start_ca(store, title, reason)
        out.print(f"phase 1 of 3: a new CA (SHA-256 {entry['new_ca'][:23]}…) is trusted beside the old one; "
                  f"deploy every node ({deploy}), then `kontur secrets rotate ca --continue --reason …`",
                  markup=False)
        return 0
    c = rotation.changeover(store)
    if c is None:
        raise InvalidInput("no CA change-over is under way; `kontur secrets rotate ca --reason …` starts one")
    want = rotation.PHASE_TRUST if phase2 else rotation.PHASE_REISSUE
    waiting = rotation.not_ready(store, _reachable(region, lab)) if c.phase == want else {}
    if waiting and not force:
        raise InvalidInput(f"refused: {len(waiting)} node(s) not ready; deploy them ({deploy}) and run this "
                           f"again:\n  " + "\n  ".join(f"{n}: {why}" for n, why in waiting.items()))
    if phase2:
        rotation.continue_ca(store, title, reason, not_ready=sorted(waiting), forced=force)
        users = rotation.old_user_certs(store)
        out.print(f"phase 2 of 3: every certificate is issued from the new CA at the next render; deploy every "
                  f"node ({deploy}), then `kontur secrets rotate ca --finish --reason …`"
                  + (f"\nbrowser certificates of the old CA ({', '.join(users)}): hand out new ones with "
                     f"`kontur users issue LOGIN` before --finish" if users else ""), markup=False)
    else:
        rotation.finish_ca(store, title, reason, not_ready=sorted(waiting), forced=force)
        out.print(f"phase 3 of 3: the old CA is no longer trusted after the next deploy of every node ({deploy})",
                  markup=False)
    return 0


def _reachable(region, lab: bool):
    """The region with the addresses this machine reaches it at (the running lab's with --lab)."""
    from . import target
    return target.resolve(region, lab=lab).region


@secrets_group.command("log")
@store_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, as kept.")
def log_command(inventory, lab, secrets_dir, as_json):
    """The store's audit log: every rotation (when, who, what, why; never a value)."""
    import json

    from . import rotation
    region = load_region(inventory)
    rows = rotation.log(_open_store(region, secrets_dir, lab))
    if as_json:
        out.print("\n".join(json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rows), markup=False)
        return 0
    if not rows:
        out.print("no rotation yet", markup=False)
    for r in rows:
        what = {"password": lambda: f"password {r.get('key')}",
                "certificate": lambda: f"certificate of {r.get('node')} (serial {r.get('new_serial')})",
                "ca": lambda: f"CA phase {r.get('phase')} (new CA SHA-256 {str(r.get('new_ca'))[:23]}…)"}.get(
            r.get("what"), lambda: str(r.get("what")))()
        forced = f" [forced past {', '.join(r['forced_past'])}]" if r.get("forced_past") else ""
        out.print(f"{r.get('at')}  {r.get('who')}  {what}{forced}: {r.get('reason')}", markup=False)
    return 0
