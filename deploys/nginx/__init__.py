# SPDX-License-Identifier: AGPL-3.0-or-later
"""nginx: TLS ends here (mutual TLS with the regional CA between nodes);
Orthanc listens on loopback behind it.  On a reference node nginx is the
whole node: it proxies its users to the archive with the node's client
certificate.

configure  upload the rendered site, enable it (symlink in sites-enabled),
           remove every other site (Debian's default among them)
activate   ``nginx -t`` before any reload; reload only when the site or the
           TLS material changed; nginx enabled and running
"""
from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from ..base import activate_unit, cleanup_owned, upload
from ..node import context

UNIT = "nginx.service"
DEFAULTS = {"nginx_check": "nginx -t -q"}


@deploy("nginx: configure", data_defaults=DEFAULTS)
def configure() -> None:
    ctx = context()
    upload(ctx, "nginx", ctx.files_under("/etc/nginx/"))
    site = ctx.bundle.facts.get("nginx_site")
    names = [f.path for f in ctx.files_under("/etc/nginx/")]
    if site:
        link = "/etc/nginx/sites-enabled/" + str(site).rsplit("/", 1)[1]
        name = f"nginx: enable {link}"
        meta = files.link(name=name, path=link, target=str(site))
        ctx.record(name, meta)
        site_file = next((f for f in ctx.bundle.files if f.path == site), None)
        for unit in (site_file.reloads if site_file else (UNIT,)):
            ctx.reloads.setdefault(unit, []).append(meta)
        names.append(link)
    owned = {d: g for d, g in ctx.bundle.owned.items() if d.startswith("/etc/nginx/")}
    cleanup_owned(ctx, "nginx", owned, names)


@deploy("nginx: activate", data_defaults=DEFAULTS)
def activate() -> None:
    ctx = context()
    if UNIT in ctx.bundle.services:
        activate_unit(ctx, "nginx", UNIT, check=DEFAULTS["nginx_check"], log="tail -n 3 /var/log/nginx/error.log 2>/dev/null")
