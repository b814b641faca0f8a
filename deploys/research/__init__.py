# SPDX-License-Identifier: AGPL-3.0-or-later
"""The research exporter (issue 16) on a collection point whose feeds deliver
into the research node: its secrets file, its oneshot service and the timer.

configure  /etc/kontur/research.json, kontur-research.service and .timer;
           daemon-reload when a unit changed
activate   the timer enabled and running (the service runs when it fires;
           its code is the deployed plugins' kontur_plugins.research)
"""
from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import systemd
from pyinfra.operations.util import any_changed

from ..base import activate_unit, upload
from ..node import context

TIMER = "kontur-research.timer"
UNITS = ("/etc/systemd/system/kontur-research.service", "/etc/systemd/system/kontur-research.timer")
PREFIXES = ("/etc/kontur/research.json",) + UNITS


@deploy("Research feeds: configure")
def configure() -> None:
    ctx = context()
    mine = ctx.files_under(*PREFIXES)
    if not mine:
        return
    uploads = upload(ctx, "Research feeds", mine)
    units = [m for f, m in zip(mine, uploads) if f.path in UNITS]
    if units:
        name = "Research feeds: systemd daemon-reload"
        ctx.record(name, systemd.daemon_reload(name=name, _if=any_changed(*units)), gates=units)


@deploy("Research feeds: activate")
def activate() -> None:
    ctx = context()
    if TIMER not in ctx.bundle.services:
        return
    activate_unit(ctx, "Research feeds", TIMER)
