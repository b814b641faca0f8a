# SPDX-License-Identifier: AGPL-3.0-or-later
"""The host-level files the deploy needs: package source, PostgreSQL settings."""
from __future__ import annotations

from kontur.inventory import load
from kontur.render import render_node
from kontur.render.system import APT_SOURCE, POSTGRESQL_CONF
from kontur.secrets import SecretStore


def _region(**mirror):
    region = load()
    if mirror:
        data = region.model_dump(mode="json")
        data["region"].update(mirror)
        region = type(region).model_validate(data)
    return region


def test_postgresql_listens_on_loopback_only(tmp_path):
    store = SecretStore(tmp_path / "s")
    b = render_node(_region(), "tsami", store)
    conf = b.file(POSTGRESQL_CONF)
    assert "listen_addresses = '127.0.0.1'" in conf.text
    assert "port = 5432" in conf.text
    assert conf.restarts == ("postgresql.service",)
    # gateways keep an SQLite buffer: no PostgreSQL at all
    gw = render_node(_region(), "crb-gw", store)
    assert all(not f.path.startswith("/etc/postgresql/") for f in gw.files)


def test_mirror_is_the_only_package_source(tmp_path):
    store = SecretStore(tmp_path / "s")
    plain = render_node(_region(), "tsami", store)
    assert all(not f.path.startswith("/etc/apt/") for f in plain.files)
    assert not any(d.startswith("/etc/apt") for d in plain.owned)
    b = render_node(_region(package_mirror="http://mirror.region.invalid/debian/"), "tsami", store)
    src = b.file(APT_SOURCE).text
    assert "URIs: http://mirror.region.invalid/debian\n" in src
    assert "URIs: http://mirror.region.invalid/debian-security\n" in src
    assert b.owned["/etc/apt/sources.list.d"] == "*"
    assert b.owned["/etc/apt"] == "sources.list"


def test_rendering_stays_deterministic(tmp_path):
    store = SecretStore(tmp_path / "s")
    a = render_node(_region(), "onco-lami", store)
    b = render_node(_region(), "onco-lami", store)
    assert [(f.path, f.content) for f in a.files] == [(f.path, f.content) for f in b.files]
