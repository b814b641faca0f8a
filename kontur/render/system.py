"""Host-level files the deploy needs besides Orthanc's: the package source
and PostgreSQL's server settings.  Kept apart from the Orthanc rendering so
the two stay small; :func:`kontur.render.render_node` calls these.

- ``/etc/apt/sources.list.d/kontur.sources``: the region's package mirror
  (``region.package_mirror``), the only source a node uses: kontur then owns
  ``/etc/apt/sources.list.d`` and removes ``/etc/apt/sources.list``.
- ``/etc/postgresql/<version>/main/conf.d/kontur.conf``: PostgreSQL listens on
  loopback only, on the inventory's port; Orthanc is its only client.
"""
from __future__ import annotations

from ..model import Region
from .bundle import Bundle, RenderedFile

#: Debian 12's PostgreSQL; the cluster Debian's package creates
POSTGRESQL_VERSION = "15"
POSTGRESQL_CLUSTER = "main"
POSTGRESQL_CONF = f"/etc/postgresql/{POSTGRESQL_VERSION}/{POSTGRESQL_CLUSTER}/conf.d/kontur.conf"
#: the systemd unit of the cluster (postgresql.service only groups clusters)
POSTGRESQL_CLUSTER_UNIT = f"postgresql@{POSTGRESQL_VERSION}-{POSTGRESQL_CLUSTER}.service"
APT_SOURCE = "/etc/apt/sources.list.d/kontur.sources"
DEBIAN_SUITE = "bookworm"


def postgresql_conf(port: int) -> bytes:
    return (
        "# Rendered by kontur — do not edit on the host: edit the inventory.\n"
        "# Orthanc on this host is the only client: loopback only.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {port}\n"
    ).encode()


def apt_source(mirror: str) -> bytes:
    mirror = mirror.rstrip("/")
    return (
        "# Rendered by kontur — the region's package mirror is this node's only source.\n"
        "Types: deb\n"
        f"URIs: {mirror}\n"
        f"Suites: {DEBIAN_SUITE} {DEBIAN_SUITE}-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        f"URIs: {mirror}-security\n"
        f"Suites: {DEBIAN_SUITE}-security\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    ).encode()


def add_apt_source(region: Region, bundle: Bundle) -> None:
    mirror = region.region.package_mirror
    if not mirror:
        return
    bundle.files.append(RenderedFile(APT_SOURCE, apt_source(mirror), "0644"))
    bundle.owned["/etc/apt/sources.list.d"] = "*"
    bundle.owned["/etc/apt"] = "sources.list"


def add_postgresql_conf(region: Region, node: str, bundle: Bundle, restarts: tuple[str, ...]) -> None:
    bundle.files.append(RenderedFile(POSTGRESQL_CONF, postgresql_conf(region.ports(node).postgresql),
                                     "0644", restarts=restarts))
