"""Host-level files the deploy needs besides Orthanc's: the package source
and PostgreSQL's server settings.  Kept apart from the Orthanc rendering so
the two stay small; :func:`kontur.render.render_node` calls these.

- ``/etc/apt/sources.list.d/kontur.sources``: the region's package mirror
  (``region.package_mirror``), the only source a node uses: kontur then owns
  ``/etc/apt/sources.list.d`` and removes ``/etc/apt/sources.list``.
  In the lab instead (:class:`AptRepository`, given by the target): the lab's
  signed repository, ``/etc/apt/sources.list.d/kontur-lab.list`` and its key
  ``/etc/apt/keyrings/kontur-lab.gpg``.
- ``/etc/postgresql/<version>/main/conf.d/kontur.conf``: PostgreSQL listens on
  loopback only, on the inventory's port; Orthanc is its only client.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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
#: the lab's repository key on a host (see kontur.lab.config.HOST_KEYRING) and its source
LAB_KEYRING = "/etc/apt/keyrings/kontur-lab.gpg"
LAB_SOURCE = "/etc/apt/sources.list.d/kontur-lab.list"


@dataclass(frozen=True)
class AptRepository:
    """A signed repository as a node's only package source (the lab's): its
    public key and its ``deb [signed-by=...] URL ./`` line."""
    keyring: bytes
    source_line: str


def postgresql_conf(port: int) -> bytes:
    return (
        "# Rendered by kontur — do not edit on the host: edit the inventory.\n"
        "# Orthanc on this host is the only client: loopback only.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {port}\n"
    ).encode()


_DEB822_FIELD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*", re.ASCII)
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def deb822(stanzas: list[list[tuple[str, str]]]) -> str:
    """Stanzas of ``(field, value)`` in deb822 form (sources.list(5)).

    Built from fields, never from interpolated text: a value is one line of
    printable characters (a newline would add a field such as ``Trusted: yes``
    or a whole repository), a field name is letters, digits and hyphens."""
    out = []
    for stanza in stanzas:
        lines = []
        for field, value in stanza:
            if not _DEB822_FIELD.fullmatch(field):
                raise ValueError(f"deb822 field name {field!r} is not letters, digits and hyphens")
            if not value or value != value.strip() or any(not c.isprintable() for c in value):
                raise ValueError(f"deb822 field {field}: {value!r} is not one line of printable text")
            lines.append(f"{field}: {value}\n")
        out.append("".join(lines))
    return "\n".join(out)


def apt_source(mirror: str) -> bytes:
    mirror = mirror.rstrip("/")
    return ("# Rendered by kontur — the region's package mirror is this node's only source.\n" + deb822([
        [("Types", "deb"), ("URIs", mirror), ("Suites", f"{DEBIAN_SUITE} {DEBIAN_SUITE}-updates"),
         ("Components", "main"), ("Signed-By", _KEYRING)],
        [("Types", "deb"), ("URIs", f"{mirror}-security"), ("Suites", f"{DEBIAN_SUITE}-security"),
         ("Components", "main"), ("Signed-By", _KEYRING)],
    ])).encode()


def add_apt_source(region: Region, bundle: Bundle, repository: AptRepository | None = None) -> None:
    if repository is not None:
        line = repository.source_line.strip()
        if not line or "\n" in line or any(not c.isprintable() for c in line):
            raise ValueError(f"the repository's source line {line!r} is not one line of printable text")
        bundle.files += [
            RenderedFile(LAB_KEYRING, repository.keyring, "0644"),
            RenderedFile(LAB_SOURCE, f"# kontur lab: the lab's signed repository is the only source\n{line}\n".encode(),
                         "0644")]
    else:
        mirror = region.region.package_mirror
        if not mirror:
            return
        bundle.files.append(RenderedFile(APT_SOURCE, apt_source(mirror), "0644"))
    bundle.owned["/etc/apt/sources.list.d"] = "*"
    bundle.owned["/etc/apt"] = "sources.list"


def add_postgresql_conf(region: Region, node: str, bundle: Bundle, restarts: tuple[str, ...]) -> None:
    bundle.files.append(RenderedFile(POSTGRESQL_CONF, postgresql_conf(region.ports(node).postgresql),
                                     "0644", restarts=restarts))
