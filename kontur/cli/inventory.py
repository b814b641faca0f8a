"""Planner edits: ``kontur inventory add-hospital | add-modality |
remove-modality | remove-hospital | sheet``.

Edits are made on the round-trip YAML document, so comments, order and
quoting survive.  The edited document is validated as a whole before it is
written; what validation would refuse is refused (exit 2) and the file is left
untouched.  Writes are atomic: a crash never leaves half a file.

Every edit is one locked read-modify-write (:func:`_edit`): two planners
editing at once are served one after the other, each edit made on what the
other wrote.  A read-only inventory is refused before anything changes; a
symlinked inventory is edited through the link (its target is replaced, the
link stays).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from rich.table import Table
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from . import inventory_option, inventory_path, out
from ..errors import InvalidInput
from ..files import replace_keeping_mode
from ..inventory import InventoryError, dump_rt, locked, parse_yaml, read_text, validate_data
from ..model import LEGACY_NOTE, Role


def _edit(inventory: str | None, change: Callable[[Path, CommentedMap], str]) -> None:
    """The one read-modify-write of the inventory: lock it, read and validate it,
    ``change(path, doc)`` (which returns what it did, or raises InvalidInput),
    validate the result and write it atomically, all under the lock."""
    path = inventory_path(inventory)
    try:
        with locked(path) as real:
            try:
                text = read_text(real)
                doc = parse_yaml(text, str(path))
                validate_data(doc, str(path), real.parent)
            except InventoryError as exc:
                raise InvalidInput(exc.report() + "\nfix the file first: an edit is only made on a sound region") from None
            what = change(path, doc)
            _save(path, real, doc, what)
    except InventoryError as exc:
        raise InvalidInput(exc.report()) from None


def _save(path: Path, real: Path, doc, what: str) -> None:
    text = dump_rt(doc)
    try:
        # validate what would be written, re-parsed from the text itself
        validate_data(parse_yaml(text, str(path)), str(path), real.parent)
    except InventoryError as exc:
        lines = [f"refused ({what}): the region would not be sound; {path} is unchanged:"]
        lines += [f"  {p.path}: {p.message}" if p.path else f"  {p.message}" for p in exc.problems]
        raise InvalidInput("\n".join(lines)) from None
    try:
        replace_keeping_mode(real, text)
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot be written ({exc.strerror or exc}); it is unchanged") from None
    out.print(f"{path}: {what}")


def _section(doc, key: str) -> CommentedMap:
    if key not in doc or doc[key] is None:
        doc[key] = CommentedMap()
    return doc[key]


@click.group("inventory", context_settings={"help_option_names": ["-h", "--help"]})
def inventory_group():
    """Edit the region inventory in place (planners), print connection sheets.

    Comments and order in the YAML are kept.  An edit that validation would
    refuse is refused with exit 2 and the file is left as it was.
    """


ROLE_FOR_TYPE = {1: Role.LAMI, 2: Role.GATEWAY, 3: Role.REFERENCE}


@inventory_group.command("add-hospital")
@inventory_option
@click.argument("key")
@click.option("--title", required=True, help="Full name of the hospital.")
@click.option("--type", "htype", type=click.IntRange(1, 3), required=True,
              help="1: own local archive (LAMI); 2: gateway to the TsAMI; 3: reference centre.")
@click.option("--node", "node", metavar="NAME", help="Host name of its node. Default: KEY-lami / KEY-gw / KEY-web.")
@click.option("--address", metavar="IP", help="The node's address in the secure network (required unless type 3 has no node).")
@click.option("--aet", metavar="AET", help="The node's AE title (types 1 and 2). Default: KEY in capitals + _LAMI / _GW.")
@click.option("--network", metavar="CIDR", help="The hospital's network, e.g. 10.42.7.0/24.")
@click.option("--upstream", default=None, metavar="NODE", help="Where the node sends (default: the region's TsAMI).")
@click.option("--policy", type=click.Choice(["all", "pathology", "on-demand"]), default="all", show_default=True,
              help="Replication to the TsAMI: every study, only flagged pathology, or on request only.")
@click.option("--window", "windows", multiple=True, metavar="HH:MM-HH:MM",
              help="Transfer window in the region's time zone (repeatable). Default: any time.")
@click.option("--bandwidth-mbit", type=float, default=None, help="Cap on the link to the TsAMI, Mbit/s.")
@click.option("--staff-name", help="Responsible person (R7): full name.")
@click.option("--staff-position", help="Responsible person: position.")
@click.option("--work-phone", help="Responsible person: work phone.")
@click.option("--mobile-phone", help="Responsible person: mobile phone.")
@click.option("--mis", metavar="HOST:PORT", help="The hospital information system's HL7 (MLLP) endpoint.")
def add_hospital(inventory, key, title, htype, node, address, aet, network, upstream, policy, windows,
                 bandwidth_mbit, staff_name, staff_position, work_phone, mobile_phone, mis):
    """Add hospital KEY with its node (a LAMI for type 1, a gateway for type 2,
    a web front for type 3).

    \b
    Example:
      kontur inventory add-hospital gkb5 --type 1 --title "ГКБ №5" \\
        --network 10.42.7.0/24 --address 10.42.7.10 --aet GKB5_LAMI \\
        --staff-name "Иванов И.И." --staff-position "инженер" \\
        --work-phone "+7 3842 00-07-10" --mobile-phone "+7 900 000-07-10"

    Then add its modalities with `kontur inventory add-modality` and roll it
    out with `kontur deploy`.
    """
    def change(path, doc) -> str:
        nonlocal node
        hospitals = _section(doc, "hospitals")
        nodes = _section(doc, "nodes")
        if key in hospitals:
            raise InvalidInput(f"hospital {key!r} already exists in {path}; choose another key or remove it first")
        role = ROLE_FOR_TYPE[htype]
        suffix = {Role.LAMI: "lami", Role.GATEWAY: "gw", Role.REFERENCE: "web"}[role]
        node = node or f"{key}-{suffix}"
        if node in nodes:
            raise InvalidInput(f"node {node!r} already exists; name the new hospital's node with --node")
        tsami = next((n for n, spec in nodes.items() if spec.get("role") == "tsami"), None)
        if address is None:
            raise InvalidInput("--address is required: the IPv4 address of the hospital's node in the secure network")
        spec = CommentedMap()
        spec["role"] = role.value
        spec["address"] = address
        if role in (Role.LAMI, Role.GATEWAY):
            spec["aet"] = aet or f"{key.upper().replace('-', '_')[:12]}_{'LAMI' if role == Role.LAMI else 'GW'}"
            spec["upstream"] = upstream or tsami
        else:
            spec["reads_from"] = upstream or tsami
        nodes[node] = spec

        h = CommentedMap()
        h["title"] = title
        h["type"] = htype
        if network:
            h["network"] = network
        h["node"] = node
        staff = [staff_name, staff_position, work_phone, mobile_phone]
        if any(staff):
            if not all(staff):
                raise InvalidInput("responsible staff needs all of --staff-name, --staff-position, --work-phone, --mobile-phone")
            person = CommentedMap(name=staff_name, position=staff_position, work_phone=work_phone, mobile_phone=mobile_phone)
            h["staff"] = CommentedSeq([person])
        if mis:
            host, _, port = mis.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidInput(f"--mis {mis!r}: expected HOST:PORT such as 10.42.7.5:2575")
            h["mis"] = CommentedMap(host=host, port=int(port))
        if htype != 3:
            rep = CommentedMap()
            rep["policy"] = policy
            if windows:
                rep["windows"] = CommentedSeq(windows)
            if bandwidth_mbit is not None:
                rep["bandwidth_mbit"] = bandwidth_mbit
            h["replication"] = rep
            h["modalities"] = CommentedSeq()
        hospitals[key] = h
        return f"added hospital {key} (type {htype}) with node {node} ({role.value})"

    _edit(inventory, change)


@inventory_group.command("add-modality")
@inventory_option
@click.argument("hospital")
@click.option("--aet", required=True, help="The modality's own AE title (unique in the region, 1-16 characters).")
@click.option("--host", required=True, metavar="IP", help="The modality's IPv4 address.")
@click.option("--port", type=int, default=104, show_default=True, help="The modality's DICOM port.")
@click.option("--modality", "code", required=True, metavar="CODE", help="Modality code: CT, MR, NM, PT, DX, CR, MG, US, ES, XA, RF …")
@click.option("--name", default=None, help="Symbolic name (default: the AE title in lower case).")
@click.option("--vendor", default=None)
@click.option("--model", default=None)
@click.option("--studies-per-day", type=int, default=None, help="Expected load, for planning.")
def add_modality(inventory, hospital, aet, host, port, code, name, vendor, model, studies_per_day):
    """Connect a modality to HOSPITAL: it will send to the hospital's node.

    \b
    Example:
      kontur inventory add-modality gkb3 --aet GKB3_MR1 --host 10.42.2.24 \\
        --modality MR --vendor Siemens --model "MAGNETOM Sempra"

    Print what the engineer on site needs with `kontur inventory sheet GKB3_MR1`.
    """
    def change(path, doc) -> str:
        hospitals = doc.get("hospitals") or {}
        if hospital not in hospitals:
            raise InvalidInput(f"unknown hospital {hospital!r}; expected one of: {', '.join(hospitals) or '(none)'}")
        h = hospitals[hospital]
        if "modalities" not in h or h["modalities"] is None:
            h["modalities"] = CommentedSeq()
        m = CommentedMap()
        m["aet"] = aet
        m["host"] = host
        m["port"] = port
        m["modality"] = code
        for k, v in (("name", name), ("vendor", vendor), ("model", model), ("studies_per_day", studies_per_day)):
            if v is not None:
                m[k] = v
        h["modalities"].append(m)
        return f"added modality {aet} ({code}) to {hospital}"

    _edit(inventory, change)


def _find_modality(doc, ident: str):
    for hk, h in (doc.get("hospitals") or {}).items():
        for i, m in enumerate(h.get("modalities") or []):
            key = m.get("name") or str(m.get("aet", "")).lower().replace("_", "-").replace(" ", "-")
            if ident in (m.get("aet"), key):
                return hk, i, m
    return None


@inventory_group.command("remove-modality")
@inventory_option
@click.argument("modality")
def remove_modality(inventory, modality):
    """Disconnect MODALITY (its AE title or name) from its hospital."""
    def change(path, doc) -> str:
        found = _find_modality(doc, modality)
        if not found:
            raise InvalidInput(f"no modality {modality!r} in {path}; `kontur show` lists them")
        hk, i, m = found
        del doc["hospitals"][hk]["modalities"][i]
        return f"removed modality {m['aet']} from {hk}"

    _edit(inventory, change)


@inventory_group.command("remove-hospital")
@inventory_option
@click.argument("hospital")
@click.option("--keep-node", is_flag=True, help="Keep the hospital's node in `nodes` (it is removed by default).")
def remove_hospital(inventory, hospital, keep_node):
    """Remove HOSPITAL, its modalities and (unless --keep-node) its node.

    Users that belong to the hospital must be moved or removed first: the edit
    is refused while anything still refers to it.  Removing a hospital from
    the inventory does not delete its archive: the node's data stays on disk.
    """
    def change(path, doc) -> str:
        hospitals = doc.get("hospitals") or {}
        if hospital not in hospitals:
            raise InvalidInput(f"unknown hospital {hospital!r}; expected one of: {', '.join(hospitals) or '(none)'}")
        node = hospitals[hospital].get("node")
        del hospitals[hospital]
        if node and not keep_node and node in (doc.get("nodes") or {}):
            del doc["nodes"][node]
        return f"removed hospital {hospital}" + (f" and node {node}" if node and not keep_node else "")

    _edit(inventory, change)


@inventory_group.command("sheet")
@inventory_option
@click.argument("modality")
def sheet(inventory, modality):
    """Print the connection sheet for MODALITY (its AE title or name): what the
    modality engineer enters on site (R8).  Both sides get the other's AE
    title, address and port."""
    from . import load_region

    region = load_region(inventory)
    found = region.find_modality(modality)
    if not found:
        raise InvalidInput(f"no modality {modality!r}; `kontur show` lists them")
    hk, _i, m = found
    h = region.hospitals[hk]
    node = h.node
    if m.legacy_folder:
        raise InvalidInput(f"modality {m.aet} has no DICOM connection sheet: it is {LEGACY_NOTE}")
    spec = region.nodes[node]
    ports = region.ports(node)
    t = Table(title=f"Connection sheet — {m.aet} ({m.modality}) at {h.title}", title_justify="left", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("THIS MODALITY", "")
    t.add_row("  AE title (calling)", m.aet)
    t.add_row("  IP address", m.host)
    t.add_row("  DICOM port", str(m.port))
    t.add_row("  device", " ".join(x for x in (m.modality, m.vendor, m.model) if x))
    t.add_row("SEND STUDIES TO (C-STORE)", "")
    t.add_row("  AE title (called)", spec.aet or "—")
    t.add_row("  IP address", spec.address)
    t.add_row("  DICOM port", str(ports.dicom))
    t.add_row("  archive", f"{node} ({spec.role.value})")
    t.add_row("  verify", "C-ECHO from the modality to the archive must succeed")
    if hk in region.mis_hospitals(node):
        t.add_row("WORKLIST (MWL, C-FIND)", "")
        t.add_row("  AE title (called)", spec.aet or "—")
        t.add_row("  IP address", spec.address)
        t.add_row("  DICOM port", str(ports.dicom))
        t.add_row("  answers", f"this modality's orders from the MIS ({h.mis.facility or hk.upper()}), "
                              "UTF-8 (ISO_IR 192)" + (f"; station names {', '.join(m.station_names)}"
                                                      if m.station_names else ""))
        t.add_row("MPPS (N-CREATE / N-SET)", "")
        t.add_row("  AE title (called)", spec.aet or "—")
        t.add_row("  IP address", spec.address)
        t.add_row("  port", str(ports.mpps))
    else:
        t.add_row("WORKLIST (MWL) / MPPS", f"none: {h.title} has no MIS in the inventory (hospitals.{hk}.mis)")
    if h.staff:
        p = h.staff[0]
        t.add_row("RESPONSIBLE ON SITE", f"{p.name}, {p.position}; work {p.work_phone}; mobile {p.mobile_phone}")
    t.add_row("NOTE", "the archive accepts only this AE title from this address (DicomCheckModalityHost)")
    out.print(t)


__all__ = ["inventory_group"]
