# SPDX-License-Identifier: AGPL-3.0-or-later
"""Orthanc: the archive of a TsAMI, LAMI, gateway or research node.

configure  kontur owns /etc/orthanc: the rendered JSON files (by topic,
           credentials 0600 for the orthanc user), nothing else -- Debian's
           own files there define the same sections and one is world-readable;
           the systemd drop-in (TCP_NODELAY, the configuration check as
           ExecStartPre); the kontur plugin, Lua scripts, replication policy
           and the configuration checker
activate   daemon-reload when the drop-in changed; check the configuration
           before a restart (a bad file leaves the running archive alone);
           restart only when a file naming orthanc.service changed; Orthanc
           enabled, running and answering on its loopback HTTP port
"""
from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ..base import activate_unit, cleanup_owned, upload
from ..node import context

UNIT = "orthanc.service"
DROPIN_DIR = "/etc/systemd/system/orthanc.service.d/"
PREFIXES = ("/etc/orthanc/", DROPIN_DIR, "/usr/lib/kontur/plugins/", "/usr/lib/kontur/lua/",
            "/usr/lib/kontur/bin/", "/etc/kontur/policy.json")
DEFAULTS = {
    "orthanc_config_dir": "/etc/orthanc",
    "orthanc_check": "/usr/lib/kontur/bin/check-orthanc-config /etc/orthanc",
    "orthanc_log_dir": "/var/log/orthanc",
}


@deploy("Orthanc: configure", data_defaults=DEFAULTS)
def configure() -> None:
    ctx = context()
    mine = ctx.files_under(*PREFIXES)
    uploads = upload(ctx, "Orthanc", mine)
    dropins = [m for f, m in zip(mine, uploads) if f.path.startswith(DROPIN_DIR)]
    if dropins:
        name = "Orthanc: systemd daemon-reload"
        ctx.record(name, systemd.daemon_reload(name=name, _if=any_changed(*dropins)), gates=dropins)
    owned = {d: g for d, g in ctx.bundle.owned.items() if d.rstrip("/") == DEFAULTS["orthanc_config_dir"]}
    cleanup_owned(ctx, "Orthanc", owned, [f.path for f in mine])


@deploy("Orthanc: activate", data_defaults=DEFAULTS)
def activate() -> None:
    ctx = context()
    if UNIT not in ctx.bundle.services:
        return
    ports = ctx.bundle.facts.get("ports", {})
    http, dicom = int(ports.get("http", 8042)), int(ports.get("dicom", 4242))
    # ready: the HTTP server answers on loopback (401: authentication is on)
    # and the DICOM port is Orthanc's (not another process's)
    ready = (f"curl -s -o /dev/null --max-time 2 -w '%{{http_code}}' http://127.0.0.1:{http}/system "
             f"| grep -qv '^000$' && ss -Hltnp 'sport = :{dicom}' | grep -q '\"Orthanc\"'")
    # Debian's unit sends Orthanc's log to files: its error lines say why it stopped
    log = (f"grep -h '^E' $(ls -t {DEFAULTS['orthanc_log_dir']}/*.log 2>/dev/null | head -n 1) "
           "2>/dev/null | tail -n 3")
    activate_unit(ctx, "Orthanc", UNIT, check=DEFAULTS["orthanc_check"], ready=ready, log=log)
