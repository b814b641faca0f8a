"""kontur.policy.build_policy on the example region, and the plugin's hygiene."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from kontur.errors import InvalidInput
from kontur.inventory import load
from kontur.policy import build_policy
from kontur_plugins.replication.config import parse_policy

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


def upstream(node: str) -> dict:
    return {"name": "tsami", "aet": "KZ_TSAMI", "url": "https://10.42.0.10:443", "username": f"peer-{node}",
            "password": "s3cret", "ca_file": "/etc/kontur/tls/ca.crt", "cert_file": "/etc/kontur/tls/node.crt",
            "key_file": "/etc/kontur/tls/node.key"}


@pytest.fixture(scope="module")
def region():
    return load()


def test_lami_all_with_windows_and_cap(region):
    doc = build_policy(region, "onco-lami", upstream("onco-lami"))
    r = doc["replication"]
    assert doc["timezone"] == "Asia/Novokuznetsk" and doc["hospital"] == "onco" and doc["role"] == "lami"
    assert r["mode"] == "all" and not r["gateway"] and r["windows"] == ["20:00-07:00"]
    assert r["bandwidth_mbit"] == 50 and r["deadline_hours"] == 24 and r["retention_days"] is None
    assert r["upstream"]["url"] == "https://10.42.0.10:443/"          # trailing slash added
    assert doc["state_dir"] == "/var/lib/kontur"
    cfg = parse_policy(doc)
    assert cfg.enabled and cfg.upstream.tls


def test_each_hospital_policy(region):
    assert build_policy(region, "gkb3-lami", upstream("gkb3-lami"))["replication"]["mode"] == "pathology"
    assert build_policy(region, "perinatal-lami", upstream("perinatal-lami"))["replication"]["mode"] == "on-demand"
    crb = build_policy(region, "crb-gw", upstream("crb-gw"))["replication"]
    assert crb["gateway"] and crb["mode"] == "all" and crb["retention_days"] == 7 and crb["bandwidth_mbit"] == 10
    van = build_policy(region, "mammo-gw", upstream("mammo-gw"))["replication"]
    assert van["retention_days"] == 14 and van["tuning"]["retry_max_seconds"] == 60   # intermittent link
    assert van["tuning"]["link_probe_seconds"] == 10


@pytest.mark.parametrize("node", ["tsami", "research", "ref-web"])
def test_nodes_without_replication(region, node):
    doc = build_policy(region, node, None)
    assert doc["replication"]["enabled"] is False and doc["replication"]["reason"]
    assert not parse_policy(doc).enabled


def test_deterministic_and_plain_http(region):
    a = json.dumps(build_policy(region, "onco-lami", upstream("onco-lami")), sort_keys=True)
    b = json.dumps(build_policy(region, "onco-lami", upstream("onco-lami")), sort_keys=True)
    assert a == b
    plain = {**upstream("onco-lami"), "url": "http://127.0.0.1:8042/", "ca_file": None, "cert_file": None,
             "key_file": None}
    doc = build_policy(region, "onco-lami", plain, state_dir="/tmp/state", tuning={"stable_grace_seconds": 1})
    assert doc["state_dir"] == "/tmp/state" and doc["replication"]["tuning"]["stable_grace_seconds"] == 1
    assert not parse_policy(doc).upstream.tls


def test_bad_input(region):
    with pytest.raises(InvalidInput, match="not in the inventory"):
        build_policy(region, "nowhere", None)
    with pytest.raises(InvalidInput, match="renderer must give"):
        build_policy(region, "onco-lami", None)
    with pytest.raises(InvalidInput, match="password"):
        build_policy(region, "onco-lami", {**upstream("onco-lami"), "password": ""})
    with pytest.raises(InvalidInput, match="unknown key"):
        build_policy(region, "onco-lami", {**upstream("onco-lami"), "pasword": "x"})
    with pytest.raises(InvalidInput, match="not valid"):
        build_policy(region, "onco-lami", upstream("onco-lami"), tuning={"nonsense": 1})


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_plugin_uses_only_the_standard_library_and_only_the_glue_imports_orthanc():
    """... and the Debian python3-* packages every Orthanc node installs (kontur.packages)."""
    from kontur.packages import ORTHANC, PLUGIN_MODULES, POSTGRESQL
    assert set(PLUGIN_MODULES.values()) <= set(ORTHANC) | set(POSTGRESQL)
    # psycopg2 only where the node's PostgreSQL holds what the plugin reads
    pg_only = {m for m, pkg in PLUGIN_MODULES.items() if pkg not in ORTHANC}
    files = sorted(PLUGINS.rglob("*.py"))
    assert PLUGINS / "kontur_entry.py" in files
    for f in files:
        names = _imports(f) - {"kontur_plugins"}
        if f.name == "kontur_entry.py":
            assert "orthanc" in names
            names.discard("orthanc")
        else:
            assert "orthanc" not in names, f
        assert f.name != "orthanc.py"
        foreign = {n for n in names if n not in sys.stdlib_module_names and n != "__future__"
                   and n not in PLUGIN_MODULES}
        assert not foreign, f"{f}: {foreign}"
        if names & pg_only:
            assert f.name == "state.py", f"{f}: imports {names & pg_only}, which only a node with PostgreSQL has"
        assert "SPDX-License-Identifier: AGPL-3.0-or-later" in f.read_text(encoding="utf-8").splitlines()[0]
