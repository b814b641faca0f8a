"""Core commands: validate, show, render."""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from .. import target
from . import cli, err, inventory_option, inventory_path, load_region, out, whole
from ..model import LEGACY_NOTE, Region, Role


def secrets_option(f):
    return click.option(
        "--secrets", "secrets_dir", metavar="DIR", default=None,
        help="Secrets store (passwords, the regional CA, node keys); created on first use, mode 0700. "
             "Default: $KONTUR_SECRETS, else ~/.local/share/kontur/secrets/<region>.")(f)


@cli.command()
@inventory_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the region is sound.")
def validate(inventory, quiet):
    """Check that the region inventory is sound.

    Every problem is listed as `line N: path.to.field: what is wrong and what is
    expected`.  Exit 0 when the region is sound, 2 when it is not.
    """
    region = load_region(inventory)
    if not quiet:
        n_mod = sum(len(h.modalities) for h in region.hospitals.values())
        out.print(f"{inventory_path(inventory)}: the region is sound "
                  f"({len(region.nodes)} nodes, {len(region.hospitals)} hospitals, {n_mod} modalities)")
        for note in legacy_notes(region):
            err.print(f"note: {note}", markup=False)


def legacy_notes(region: Region) -> list[str]:
    return [f"modality {m.aet} of hospital {hk}: {LEGACY_NOTE}" for hk, m in region.legacy_devices()]


def summary_tables(region: Region) -> list[Table]:
    nodes = Table(title=f"{region.region.title} — nodes", title_justify="left")
    for col in ("node", "role", "address", "AET", "DICOM", "HTTPS", "index", "upstream", "hospital"):
        nodes.add_column(col)
    for name, spec in region.nodes.items():
        p = region.ports(name)
        archive = spec.role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH)
        nodes.add_row(name, spec.role.value, spec.address, spec.aet or "—",
                      str(p.dicom) if archive else "—", str(p.https),
                      region.index_of(name) if archive else "—",
                      spec.upstream or spec.reads_from or "—", region.hospital_of(name) or "—")

    hosp = Table(title="hospitals and replication policies", title_justify="left")
    for col in ("hospital", "type", "node", "policy", "windows", "cap Mbit/s", "deadline h", "modalities", "studies/day", "MIS"):
        hosp.add_column(col)
    for key, h in region.hospitals.items():
        r = h.replication
        kinds = sorted({m.modality for m in h.modalities})
        hosp.add_row(key, str(h.type.value), h.node or "—",
                     r.policy.value if h.type.value != 3 else "—",
                     ", ".join(r.windows) or "any time", f"{r.bandwidth_mbit:g}" if r.bandwidth_mbit else "—",
                     str(r.deadline_hours), f"{len(h.modalities)} ({', '.join(kinds)})" if kinds else "0",
                     str(sum(m.studies_per_day for m in h.modalities)),
                     f"{h.mis.host}:{h.mis.port}" if h.mis else "—")

    mods = Table(title="modalities", title_justify="left")
    for col in ("AET", "modality", "hospital", "address", "sends to", "vendor / model", "studies/day"):
        mods.add_column(col)
    for key, h in region.hospitals.items():
        for m in h.modalities:
            target = region.nodes[h.node] if h.node else None
            dest = f"{target.aet}@{target.address}:{region.ports(h.node).dicom}" if target else "—"
            if m.legacy_folder:
                dest = "files by hand (legacy device)"
            mods.add_row(m.aet, m.modality, key, f"{m.host}:{m.port}", dest,
                         " ".join(x for x in (m.vendor, m.model) if x) or "—", str(m.studies_per_day))
    return [whole(nodes, "node", "address", "AET"), whole(hosp, "node"), whole(mods, "AET", "address")]


@cli.command()
@inventory_option
def show(inventory):
    """Print the region as tables: nodes, hospitals with their replication
    policies, and modalities with where each one sends."""
    region = load_region(inventory)
    for t in summary_tables(region):
        out.print(t)


@cli.command()
@inventory_option
@click.option("--out", "out_dir", metavar="DIR", default="out", show_default=True,
              help="Where to write: one folder per node, DIR/<node>/<path on the node>.")
@click.option("--node", "nodes", metavar="NODE", multiple=True, help="Render only this node (repeatable).")
@click.option("--lab", is_flag=True, help="Render for the running lab: its addresses, its package repository and "
                                         "its secrets store -- exactly what `kontur deploy --lab` uploads.")
@secrets_option
def render(inventory, out_dir, nodes, lab, secrets_dir):
    """Render every node's files from the inventory.

    Orthanc's configuration is built as data and written as JSON, split by
    topic under etc/orthanc/ (credentials.json holds users, peers and the
    database password: mode 0600); beside it the replication policy, TLS
    material, the nginx site, the nftables firewall and the systemd drop-in.
    Each node folder has a manifest.json with owners, modes and the services
    a change restarts.  Rendering is deterministic: the same inventory and
    secrets store give byte-identical files.
    """
    from ..errors import InvalidInput, OperationFailed
    from ..render.bundle import write_out

    region = load_region(inventory)
    # the production region or the running lab: kontur.target decides, as for deploy
    where = target.resolve(region, lab=lab, inventory=inventory_path(inventory), secrets_dir=secrets_dir)
    unknown = [n for n in nodes if n not in where.region.nodes]
    if unknown:
        raise InvalidInput(f"unknown node {unknown[0]!r}; expected one of: {', '.join(where.region.nodes)}")
    try:
        store = where.store()
        bundles = where.render(store, list(nodes) or None)
    except OSError as exc:
        raise OperationFailed(f"the secrets store: {exc.filename or ''}: {exc.strerror or exc}") from None
    folder = Path(out_dir)
    write_out(folder, bundles, keep=set(where.region.nodes))
    table = Table(title=f"rendered into {folder}/", title_justify="left")
    for col in ("node", "role", "files", "services"):
        table.add_column(col)
    for b in bundles:
        table.add_row(b.node, b.role, str(len(b.files)), ", ".join(s.removesuffix(".service") for s in b.services))
    out.print(table)
    err.print(f"secrets store: {store.dir}")
