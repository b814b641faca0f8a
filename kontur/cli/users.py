# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur users list | issue``: the people who log in to the archives (R6),
where their accounts are, and the credentials MIAC ops hand over.

A doctor reaches an archive's web interface the way every other client of an
inter-site endpoint does: nginx asks for a certificate of the regional CA
(mutual TLS), then Orthanc asks for the login and password, and the role
filter grants the role's rights.  ``issue`` writes both for one person: a
PKCS#12 file for the browser and a hand-over sheet (mode 0600).
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from . import err, inventory_option, load_region, out
from .. import target
from .core import secrets_option
from ..errors import InvalidInput
from ..model import Region, User
from ..target import Target
from ..files import atomic_write

RIGHTS = ("view", "download", "upload", "delete", "admin")


def _target(inventory: str | None, lab: bool, secrets_dir: str | None = None) -> Target:
    """The production region or the running lab (:mod:`kontur.target`)."""
    return target.resolve(load_region(inventory), lab=lab, secrets_dir=secrets_dir)


def _region(inventory: str | None, lab: bool) -> Region:
    return _target(inventory, lab).region


def user_nodes(region: Region, user: User) -> list[str]:
    """The nodes where ``user`` has an account (the renderer's rule)."""
    return [n for n in region.nodes if any(u.login == user.login for u in region.users_of(n))]


def rights(region: Region, user: User) -> list[str]:
    perms = region.roles.get(user.role)
    return [r for r in RIGHTS if perms is not None and getattr(perms, r)]


def browser_url(region: Region, node: str) -> str:
    return f"https://{region.nodes[node].address}:{region.ports(node).https}/app/explorer.html"


def _unreachable(region: Region, user: User, nodes: list[str]) -> list[str]:
    """Why a browser of ``user`` may not get through the firewall to ``nodes``."""
    from ..render import firewall_rules

    notes = []
    hospital = region.hospitals.get(user.hospital) if user.hospital else None
    net = hospital.network if hospital else None
    for n in nodes:
        https = region.ports(n).https
        sources = {s for r in firewall_rules(region, n) if r["port"] == https for s in r["sources"]}
        if net is None or net not in sources:
            where = f"hospital {user.hospital}'s network" if user.hospital else "their workstation"
            notes.append(f"{n}: the firewall admits https from {', '.join(sorted(sources)) or 'nobody'}, "
                         f"not from {where}" + ("" if net else " (the hospital declares no network)"))
    return notes


def _find(region: Region, login: str) -> User:
    for u in region.users:
        if u.login == login:
            return u
    raise InvalidInput(f"no user {login!r} in the inventory; expected one of: "
                       + (", ".join(u.login for u in region.users) or "(the inventory has no users)"))


@click.group("users")
def users_group():
    """The people who log in to the archives (R6): where, with which rights, and their credentials.

    Accounts come from the inventory's `users` (each with a role from `roles`); a
    user has an account on their hospital's node and the TsAMI unless `nodes` says
    otherwise.  Passwords are generated into the secrets store and never written to
    the inventory.

    \b
      kontur users list                         who may log in where
      kontur users issue ivanova --out hand-over/
                                                browser certificate + password sheet
      kontur users revoke ivanova --reason "laptop stolen, ticket 4711"
                                                her certificate is refused after the next deploy
    """


@users_group.command("list")
@inventory_option
@click.option("--lab", is_flag=True, help="Show the lab's addresses (kontur lab up).")
def list_cmd(inventory, lab):
    """Every user: role, rights, hospital, the nodes with their account, the address to open."""
    region = _region(inventory, lab)
    t = Table(title=f"users of {region.region.title}", title_justify="left")
    for col in ("login", "name", "role", "rights", "hospital", "accounts on", "open in a browser"):
        t.add_column(col)
    for u in region.users:
        nodes = user_nodes(region, u)
        t.add_row(u.login, u.name, u.role, ", ".join(rights(region, u)) or "none", u.hospital or "-",
                  ", ".join(nodes) or "-",
                  "\n".join(browser_url(region, n).removesuffix("app/explorer.html") for n in nodes) or "-")
    out.print(t)


@users_group.command("issue")
@click.argument("login")
@inventory_option
@click.option("--out", "out_dir", metavar="DIR", required=True,
              help="Folder for LOGIN.p12 and LOGIN.txt (created 0700; both files 0600).")
@click.option("--lab", is_flag=True, help="The lab's addresses and secrets store (kontur lab up).")
@click.option("--legacy-p12", is_flag=True,
              help="Encrypt the .p12 with 3DES/SHA-1 for older Windows and macOS keychains "
                   "(default: AES-256, which current browsers read).")
@secrets_option
def issue_cmd(login, inventory, out_dir, lab, legacy_p12, secrets_dir):
    """Write LOGIN's credentials for hand-over: a browser certificate and a sheet.

    LOGIN.p12 holds the person's client certificate (regional CA, common name =
    login, client use only) with its key, protected by a passphrase; LOGIN.txt
    holds the login, the password, the passphrase and the addresses to open.
    Issuing again gives the same password and certificate (the secrets store keeps
    them).  The account itself appears on the nodes at the next `kontur deploy`.
    """
    from ..pki import user_p12

    where = _target(inventory, lab, secrets_dir)
    region = where.region
    user = _find(region, login)
    nodes = user_nodes(region, user)
    if not nodes:
        raise InvalidInput(f"user {login!r} has an account on no node (nodes: {user.nodes})")
    store = where.store()
    password = store.password(f"users/{login}")
    p12, passphrase = user_p12(store, region.region.title, login, legacy=legacy_p12)

    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(target / f"{login}.p12", p12, 0o600)
    lines = [
        f"kontur: credentials of {user.name} ({login}), {region.region.title}",
        "",
        f"role:        {user.role} ({', '.join(rights(region, user)) or 'no rights'})",
        f"login:       {login}",
        f"password:    {password}",
        f"certificate: {login}.p12 (passphrase: {passphrase})",
        "",
        "1. Import the certificate into the browser (settings: certificates, your certificates).",
        "2. Open an address below; choose the certificate when asked, then log in.",
        "",
    ]
    lines += [f"   {n:20} {browser_url(region, n)}" for n in nodes]
    lines += ["", "Hand this sheet over in person. The secrets store keeps the originals."]
    atomic_write(target / f"{login}.txt", ("\n".join(lines) + "\n").encode(), 0o600)

    out.print(f"{login}: {target / (login + '.p12')} and {target / (login + '.txt')} (mode 0600)", markup=False)
    for n in nodes:
        out.print(f"  {n}: {browser_url(region, n)}", markup=False)
    for note in _unreachable(region, user, nodes):
        err.print(f"warning: {note}", markup=False)
    err.print(f"secrets store: {store.dir}", markup=False)


@users_group.command("revoke")
@click.argument("login")
@inventory_option
@click.option("--reason", required=True, metavar="TEXT",
              help="Who asked for it and why (kept with the revocation list).")
@click.option("--lab", is_flag=True, help="The lab's secrets store (kontur lab up).")
@secrets_option
def revoke_cmd(login, inventory, reason, lab, secrets_dir):
    """Revoke LOGIN's browser certificate (a lost laptop, a person who left).

    The certificate's serial joins the regional CA's revocation list in the
    secrets store; the next `kontur deploy` puts the list on every node, and
    nginx then refuses that certificate (400) while every other one works.  The
    account and its password stay: `kontur users issue LOGIN` hands over a new
    certificate.  To close the account, remove the user from the inventory (a
    person already removed can still be revoked).
    """
    from .. import revocation
    from ..pki import forget_user_cert, issued_user_cert

    store = _target(inventory, lab, secrets_dir).store()    # a person removed from the inventory is revoked too
    row = revocation.revoke(store, login, issued_user_cert(store, login), reason)
    forget_user_cert(store, login)
    out.print(f"{login}: certificate {row.serial:x} revoked ({row.reason}); nginx on every node refuses it "
              f"after the next `kontur deploy`", markup=False)
    err.print(f"secrets store: {store.dir}", markup=False)
