# SPDX-License-Identifier: AGPL-3.0-or-later
"""The HL7 integration service (issue 11) on a LAMI or gateway whose hospital
has a MIS: orders over MLLP into the worklist Orthanc answers, MPPS.

configure  the service's code (/usr/lib/kontur/services), the pinned wheels
           Debian lacks (/usr/lib/kontur/wheels: shipped from the control
           machine, never fetched by the node), /etc/kontur/hl7.json, the unit
activate   daemon-reload when the unit changed; restart only when one of its
           files changed; enabled, running, and listening on its MLLP port
"""
from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ..base import activate_unit, upload
from ..node import context

UNIT = "kontur-hl7.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT}"
PREFIXES = ("/usr/lib/kontur/services/", "/usr/lib/kontur/wheels/", "/etc/kontur/hl7.json", UNIT_FILE)


@deploy("HL7 service: configure")
def configure() -> None:
    ctx = context()
    mine = ctx.files_under(*PREFIXES)
    if not mine:
        return
    uploads = upload(ctx, "HL7 service", mine)
    unit = [m for f, m in zip(mine, uploads) if f.path == UNIT_FILE]
    if unit:
        name = "HL7 service: systemd daemon-reload"
        ctx.record(name, systemd.daemon_reload(name=name, _if=any_changed(*unit)), gates=unit)


@deploy("HL7 service: activate")
def activate() -> None:
    ctx = context()
    if UNIT not in ctx.bundle.services:
        return
    facts = ctx.bundle.facts.get("hl7", {})
    port = int(facts.get("port", 2575))
    # ready: the service's own process listens on its MLLP port
    ready = f"ss -Hltnp 'sport = :{port}' | grep -q python3"
    log = f"journalctl -u {UNIT} -n 5 --no-pager -o cat 2>/dev/null"
    activate_unit(ctx, "HL7 service", UNIT, ready=ready, log=log)
