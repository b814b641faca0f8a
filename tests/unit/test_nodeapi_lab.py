"""nodeapi.client_for: how the CLI reaches a node, on real hosts and in the
region lab (a lab state file written by hand; no lab is started)."""
from __future__ import annotations

import ssl

import pytest

from kontur import nodeapi
from kontur.errors import InvalidInput, KonturError
from kontur.inventory import load
from kontur.lab.plan import make_plan
from kontur.lab.state import LabState, save_state
from kontur.pki import ensure_ca
from kontur.secrets import SecretStore, default_dir


@pytest.fixture
def region():
    return load()


def _store(path, region, node: str) -> SecretStore:
    store = SecretStore(path)
    store.password(f"nodes/{node}/kontur")
    ensure_ca(store, region.region.title)
    return store


def test_client_for_a_real_node_uses_its_inventory_address_and_the_operator_certificate(region, secrets_dir):
    store = _store(secrets_dir, region, "onco-lami")
    c = nodeapi.client_for(region, "onco-lami")
    spec = region.nodes["onco-lami"]
    assert c.base_url == f"https://{spec.address}:{region.ports('onco-lami').https}/"
    assert c.name == "onco-lami"
    assert c._headers["Authorization"].startswith("Basic ")
    assert isinstance(c._context, ssl.SSLContext) and c._context.verify_mode == ssl.CERT_REQUIRED
    assert (store.pki_dir / "operator" / "kontur-operator.crt").is_file()


def test_client_for_lab_uses_the_lab_address_and_the_lab_secrets(region, tmp_path, monkeypatch):
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "lab"))
    plan = make_plan(region)
    save_state(LabState(region_name=region.region.name, inventory="x", address_map=plan.address_map,
                        status="up", bridge_address="198.18.0.1"))
    _store(default_dir(region.region.name, lab=True), region, "onco-lami")
    c = nodeapi.client_for(region, "onco-lami", lab=True)
    lab_addr = plan.nodes["onco-lami"].address
    assert lab_addr.startswith("198.18.0.")
    assert c.base_url == f"https://{lab_addr}:{region.ports('onco-lami').https}/"


def test_client_for_lab_refuses_another_region_and_no_lab(region, tmp_path, monkeypatch):
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "lab"))
    with pytest.raises(KonturError, match="no lab is running"):
        nodeapi.client_for(region, "onco-lami", lab=True)
    save_state(LabState(region_name="small", inventory="/x/small.yaml", address_map={}, status="up"))
    with pytest.raises(InvalidInput, match="lab is of region 'small'"):
        nodeapi.client_for(region, "onco-lami", lab=True)


def test_client_for_lab_without_a_deploy_says_what_to_do(region, tmp_path, monkeypatch):
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "lab"))
    save_state(LabState(region_name=region.region.name, inventory="x", address_map=make_plan(region).address_map,
                        status="up"))
    with pytest.raises(InvalidInput, match="kontur deploy --lab"):
        nodeapi.client_for(region, "onco-lami", lab=True)


def test_lab_flag_is_documented(capsys):
    from kontur.cli import main
    for args in (["replicate", "--help"], ["replication", "status", "--help"]):
        assert main(args) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--lab" in out and "region lab" in out
