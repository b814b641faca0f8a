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
    identity = SecretStore(directory, create=False).identity(region.region.title)
    out.print(f"store: {directory}\nregion: {region.region.name}\nCA SHA-256: {identity.ca_sha256}\n"
              f"store id: {identity.store_id}", markup=False)
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
