# SPDX-License-Identifier: AGPL-3.0-or-later
"""inventory/region.py: the YAML region as pyinfra groups, loaded the way the
pyinfra CLI loads an inventory file."""
from __future__ import annotations

from pathlib import Path

import pytest
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory

from kontur.deploy import ROLES, host_groups
from kontur.inventory import load

REPO = Path(__file__).resolve().parents[2]
INVENTORY_FILE = REPO / "inventory" / "region.py"
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"


@pytest.fixture
def pyinfra_inventory(monkeypatch, tmp_path):
    monkeypatch.setenv("KONTUR_INVENTORY", str(EXAMPLE))
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "secrets"))
    monkeypatch.delenv("KONTUR_LAB", raising=False)
    with ctx_state.use(State()):
        return make_inventory(str(INVENTORY_FILE))


def test_groups_are_the_roles_of_the_example_region(pyinfra_inventory):
    region = load(EXAMPLE)
    for role in ROLES:
        expected = sorted(n for n, spec in region.nodes.items() if spec.role.value == role)
        assert sorted(h.name for h in pyinfra_inventory.get_group(role, [])) == expected, role
    assert sorted(h.name for h in pyinfra_inventory) == sorted(region.nodes)


def test_host_data_reaches_the_node_and_names_it(pyinfra_inventory, tmp_path):
    h = pyinfra_inventory.get_host("onco-lami")
    assert h.data.ssh_hostname == "10.42.1.10"
    assert h.data.ssh_port == 22
    assert h.data.ssh_user == "root"
    assert h.data.ssh_strict_host_key_checking == "yes"
    assert h.data.kontur_node == "onco-lami"
    assert h.data.kontur_lab is False
    assert Path(h.data.kontur_inventory) == EXAMPLE
    assert h.data.kontur_secrets == str(tmp_path / "secrets")
    assert "lami" in h.groups


def test_ssh_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path))
    monkeypatch.setenv("KONTUR_SSH_USER", "deploy")
    monkeypatch.setenv("KONTUR_SSH_KEY", "/keys/region")
    monkeypatch.setenv("KONTUR_KNOWN_HOSTS", "/keys/known_hosts")
    groups = host_groups(EXAMPLE)
    node, data = groups["tsami"][0]
    assert node == "tsami"
    assert (data["ssh_user"], data["ssh_key"], data["ssh_known_hosts_file"]) == \
        ("deploy", "/keys/region", "/keys/known_hosts")


def test_limit_to_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path))
    groups = host_groups(EXAMPLE, nodes=["tsami", "crb-gw"])
    assert [n for hosts in groups.values() for n, _ in hosts] == ["tsami", "crb-gw"]


def test_lab_without_a_running_lab_is_invalid_input(monkeypatch, tmp_path):
    from kontur.errors import KonturError
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "nolab"))
    with pytest.raises(KonturError, match="no lab is running"):
        host_groups(EXAMPLE, lab=True)
