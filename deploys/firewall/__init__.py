# SPDX-License-Identifier: AGPL-3.0-or-later
"""Firewall: the rendered nftables ruleset opens exactly the declared ports
to the declared peers, modalities and admin networks.

configure  upload /etc/nftables.conf
activate   check it with ``nft -c -f`` before loading; reload only when it
           changed; nftables.service enabled and running (the rules survive
           a reboot)
"""
from __future__ import annotations

from pyinfra.api import deploy

from ..base import activate_unit, upload
from ..node import context

UNIT = "nftables.service"
CONF = "/etc/nftables.conf"
DEFAULTS = {"firewall_check": f"nft -c -f {CONF}"}


@deploy("Firewall: configure", data_defaults=DEFAULTS)
def configure() -> None:
    ctx = context()
    upload(ctx, "Firewall", ctx.files_under(CONF))


@deploy("Firewall: activate", data_defaults=DEFAULTS)
def activate() -> None:
    ctx = context()
    if UNIT in ctx.bundle.services:
        activate_unit(ctx, "Firewall", UNIT, check=DEFAULTS["firewall_check"])
