"""``kontur lab``: the region lab commands."""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from ..cli import err, inventory_option, inventory_path, load_region, out, whole
from ..errors import EXIT_FAILED, EXIT_OK, InvalidInput, KonturError
from . import ops
from .config import state_file
from .state import require_state, ssh_command


def _progress(msg: str) -> None:
    err.print(f"· {msg}", markup=False, highlight=False)


@click.group("lab")
@click.option("-v", "--verbose", is_flag=True, help="Log every command the lab runs (to stderr).")
def lab(verbose: bool):
    """Rehearse the region on this machine: real hosts, real network, real DICOM and HL7.

    Every node of the inventory becomes a Debian 12 container (systemd, sshd) in its own
    network namespace on a private bridge (198.18.0.0/24); every inventory address maps to
    a lab address, so the inventory is never edited.  Modalities get namespaces of their
    own (`kontur lab send`), every MIS an MLLP listener that records what it receives
    (`kontur lab mis-log`).  Hosts install packages from a signed repository the lab
    serves on the bridge, and reach nothing else.  Needs root.

    \b
      kontur lab up [-i FILE]        build (cached) and boot the region's hosts
      kontur lab status              hosts, addresses, systemd state, links
      kontur lab ssh NODE [-- CMD]   log in to a host, or run a command
      kontur lab send AET PATH...    send DICOM as a modality (DCMTK storescu)
      kontur lab mis-log HOSPITAL    HL7 messages a hospital's MIS received
      kontur lab walk [--hospital H] one study along the reglament's path, step by step
      kontur lab cut|heal NODE       take a node's network link down / up
      kontur lab reboot NODE         power a host off cleanly and boot it again
      kontur lab mirror [--withhold PKG | --full]
                                     rehearse a region mirror that lacks packages
      kontur lab down                stop and remove everything the lab started

    State for other tools (pyinfra, kontur deploy --lab): $KONTUR_LAB_DIR/state.json
    (default /var/lib/kontur/lab).  Cache: $KONTUR_LAB_CACHE (default /var/cache/kontur/lab).
    """
    if verbose:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s: %(message)s")
        logging.getLogger("kontur.lab").setLevel(logging.DEBUG)


@lab.command("up")
@inventory_option
def up_cmd(inventory):
    """Bring the region's lab up: one Debian host per node, booted in parallel.

    The base root filesystem and the signed package repository are built on first
    use and cached ($KONTUR_LAB_CACHE).  On a running lab of the same region it
    follows the inventory: adds the hosts, devices and MIS listeners it gained,
    removes those it lost, and leaves every other host running.  Refuses (exit 2)
    when the lab network is in use or the running lab is of another region; a
    failure midway removes what was built (exit 1).
    """
    region = load_region(inventory)
    path = inventory_path(inventory)
    state = ops.up(region, path, progress=_progress)
    t = Table(title=f"lab of region {state.region_name}", title_justify="left")
    for col in ("node", "role", "lab address", "inventory address"):
        t.add_column(col)
    for node, h in state.hosts.items():
        t.add_row(node, h.role, h.address, h.inventory_address)
    out.print(t)
    out.print(f"log in:    kontur lab ssh NODE   (key {state.ssh_key}, known hosts {state.known_hosts})",
              markup=False)
    out.print(f"packages:  {state.apt.source_line}", markup=False)
    out.print(f"state:     {state_file()}", markup=False)
    return EXIT_OK


@lab.command("down")
def down_cmd():
    """Stop everything the lab started (by PID) and remove its namespaces, links and mounts."""
    if not ops.down(progress=_progress):
        out.print("no lab is running; nothing to do")
    return EXIT_OK


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(as_json: bool):
    """Hosts, addresses, up/down, systemd state, links; modalities and MIS listeners.

    Exit 0 when everything the lab started runs, 1 otherwise (or when no lab is up).
    """
    st = ops.status()
    if as_json:
        out.print_json(json.dumps({"region": st.region, "status": st.status, "healthy": st.healthy,
                                   "hosts": [asdict(h) for h in st.hosts],
                                   "modalities": st.modalities, "mis": st.mis, "withheld": st.withheld}))
        return EXIT_OK if st.healthy else EXIT_FAILED
    t = Table(title=f"lab of region {st.region} ({st.status})", title_justify="left")
    for col in ("node", "role", "lab address", "inventory address", "host", "link", "systemd"):
        t.add_column(col)
    for h in st.hosts:
        t.add_row(h.node, h.role, h.address, h.inventory_address,
                  "[green]up[/green]" if h.running else "[red]down[/red]",
                  "[yellow]cut[/yellow]" if h.link == "cut" else h.link, h.systemd)
    out.print(whole(t, "node", "lab address", "inventory address"))
    if st.modalities:
        t = Table(title="modalities", title_justify="left")
        for col in ("AE title", "hospital", "modality", "lab address", "inventory address", "sends to", "netns"):
            t.add_column(col)
        for m in st.modalities:
            t.add_row(m["aet"], m["hospital"], m["modality"], m["address"], m["inventory_address"],
                      m["node"], m["netns"] if m["present"] else f"[red]{m['netns']} missing[/red]")
        out.print(whole(t, "AE title", "lab address", "inventory address", "sends to"))
    if st.mis:
        t = Table(title="MIS listeners (MLLP)", title_justify="left")
        for col in ("hospital", "lab address", "inventory address", "listener", "messages"):
            t.add_column(col)
        for m in st.mis:
            t.add_row(m["hospital"], f"{m['address']}:{m['port']}", m["inventory_address"],
                      "[green]up[/green]" if m["running"] else "[red]down[/red]", str(m["messages"]))
        out.print(whole(t, "lab address", "inventory address"))
    if st.withheld:
        out.print(f"the lab repository withholds: {', '.join(st.withheld)} (kontur lab mirror --full restores it)",
                  markup=False)
    return EXIT_OK if st.healthy else EXIT_FAILED


@lab.command("ssh", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh_cmd(node, command):
    """Log in to NODE's lab host as root, or run COMMAND there (after --)."""
    argv = ssh_command(require_state(), node, *command)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise KonturError(f"cannot run ssh: {exc.strerror}", hint="install Debian's openssh-client") from None


@lab.command("cut")
@click.argument("node")
def cut_cmd(node):
    """Take NODE's network link down: the host runs on, unreachable (a partition)."""
    h = ops.set_link(node, False)
    out.print(f"{node} ({h.address}) is cut off the lab network; `kontur lab heal {node}` restores it",
              markup=False)


@lab.command("heal")
@click.argument("node")
def heal_cmd(node):
    """Bring NODE's network link back up."""
    h = ops.set_link(node, True)
    out.print(f"{node} ({h.address}) is back on the lab network", markup=False)


@lab.command("reboot")
@click.argument("node")
def reboot_cmd(node):
    """Reboot NODE's host: a clean power-off (its services stop in order), then boot it again.

    The host keeps its disk (root filesystem), address and link state.  Waits until
    sshd answers again.
    """
    h = ops.reboot(node, progress=_progress)
    out.print(f"{node} ({h.address}) rebooted", markup=False)


@lab.command("mirror")
@click.option("--withhold", "withhold", multiple=True, metavar="PKG",
              help="Stop offering PKG (repeatable); replaces what was withheld before.")
@click.option("--full", is_flag=True, help="Offer every package again.")
def mirror_cmd(withhold, full):
    """Rehearse a regional mirror that lacks packages: the repository the lab's hosts
    install from stops offering PKG (its index re-signed with the lab's key) until
    `--full`.  Hosts see the change at their next `apt-get update`, which `kontur
    deploy` runs whenever it installs something.  Without options: what is withheld.

    \b
      kontur lab mirror --withhold dcmtk   the mirror lacks dcmtk
      kontur lab mirror --full             the whole repository again
    """
    if withhold and full:
        raise InvalidInput("--withhold and --full exclude each other; give one of them")
    if withhold or full:
        now = ops.set_mirror(list(withhold))
    else:
        st = require_state()
        now = st.apt.withheld if st.apt else []
    if now:
        out.print(f"the lab repository withholds: {', '.join(now)}; `kontur lab mirror --full` restores it",
                  markup=False)
    else:
        out.print("the lab repository offers every package", markup=False)
    return EXIT_OK


@lab.command("send")
@click.argument("modality")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def send_cmd(modality, paths):
    """Send DICOM files or folders as MODALITY (AE title or name) to its node, with storescu."""
    r = ops.send(modality, list(paths))
    if r.ok:
        out.print(f"{r.aet} -> {r.node} ({r.target}): {r.stored} of {r.files} file(s) stored", markup=False)
        return EXIT_OK
    err.print(f"kontur: {r.aet} -> {r.node} ({r.target}): storescu failed "
              f"({r.stored} of {r.files} file(s) stored):", markup=False)
    err.print("\n".join(r.stderr.strip().splitlines()[-20:]), markup=False)
    return EXIT_FAILED


@lab.command("walk")
@click.option("--hospital", metavar="H", help="The hospital whose MIS orders it (default: one with the "
                                               "pathology policy).")
def walk_cmd(hospital):
    """Walk one study along the reglament's path in the deployed lab: order
    from the MIS, worklist, MPPS, images, the result, and what the node then
    tells (archived, validated, report, delivered, MIS notified), each with
    its time, and the viewer URL the MIS got."""
    from .walk import walk  # noqa: PLC0415
    walk(hospital, emit=lambda line: out.print(line, markup=False, highlight=False))
    return EXIT_OK


@lab.command("mis-log")
@click.argument("hospital")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message, as recorded.")
def mis_log_cmd(hospital, as_json):
    """HL7 messages HOSPITAL's MIS has received, oldest first."""
    info, messages = ops.mis_messages(hospital)
    if as_json:
        for m in messages:
            click.echo(json.dumps(m, ensure_ascii=False))
        return EXIT_OK
    out.print(f"MIS of {hospital} at {info.address}:{info.port} (inventory {info.inventory_address}): "
              f"{len(messages)} message(s)", markup=False)
    for m in messages:
        out.print(f"\n{m['time']}  from {m['peer']}  {m.get('type') or '?'}  control id "
                  f"{m.get('control_id') or '-'}  ack {m.get('ack')}", markup=False)
        for seg in m["message"].replace("\r\n", "\r").replace("\n", "\r").split("\r"):
            if seg:
                out.print(f"  {seg}", markup=False)
    return EXIT_OK
