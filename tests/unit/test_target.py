# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur.target: where a command acts, production or the running lab -- the
addresses, SSH settings, package source and secrets store every command takes
from it, and its refusals.  The lab is a state file written by hand (no lab is
started); the lab's own tests (tests/deploy, tests/lab) deploy through it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kontur import target
from kontur.errors import InvalidInput, KonturError
from kontur.inventory import load
from kontur.lab.plan import make_plan
from kontur.lab.state import AptInfo, HostInfo, LabState, save_state
from kontur.render.system import APT_SOURCE, LAB_KEYRING, LAB_SOURCE
from kontur.secrets import SecretStore, default_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"
SOURCE_LINE = "deb [signed-by=/etc/apt/keyrings/kontur-lab.gpg] http://198.18.0.1:8799/ ./"


@pytest.fixture
def region():
    return load(EXAMPLE)


@pytest.fixture
def lab(region, tmp_path, monkeypatch) -> LabState:
    """A running lab of the example region, as its state file says (hosts on port 2222)."""
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "lab"))
    for var in ("KONTUR_SSH_USER", "KONTUR_SSH_KEY", "KONTUR_KNOWN_HOSTS", "KONTUR_SSH_SUDO", "KONTUR_SECRETS"):
        monkeypatch.delenv(var, raising=False)
    keyring = tmp_path / "lab-key.gpg"
    keyring.write_bytes(b"\x99\x01\x0dthe lab's public key")
    plan = make_plan(region)
    hosts = {n: HostInfo(address=plan.address_map[s.address], netns=f"ns-{n}", pid=1, rootfs="/", ssh_port=2222)
             for n, s in region.nodes.items()}
    state = LabState(region_name=region.region.name, inventory=str(EXAMPLE), address_map=plan.address_map,
                     hosts=hosts, ssh_key=str(tmp_path / "lab_key"), known_hosts=str(tmp_path / "known_hosts"),
                     apt=AptInfo(url="http://198.18.0.1:8799/", keyring=str(keyring), source_line=SOURCE_LINE),
                     status="up", bridge_address="198.18.0.1")
    save_state(state)
    return state


def test_production_reaches_the_inventory_addresses_with_the_environments_ssh(region, tmp_path):
    env = {"KONTUR_SSH_USER": "deployer", "KONTUR_SSH_KEY": "/keys/k", "KONTUR_KNOWN_HOSTS": "/keys/kh",
           "KONTUR_SSH_SUDO": "1"}
    t = target.resolve(region, secrets_dir=tmp_path / "s", env=env)
    assert not t.lab and t.lab_state is None
    assert t.address("onco-lami") == region.nodes["onco-lami"].address
    ssh = t.ssh("onco-lami")
    assert (ssh.user, ssh.key, ssh.known_hosts, ssh.sudo, ssh.port) == \
        ("deployer", "/keys/k", "/keys/kh", True, region.ports("onco-lami").ssh)
    assert t.secrets == tmp_path / "s"
    assert t.apt_repository() is None
    data = t.pyinfra_data("onco-lami")
    assert data["_sudo"] is True and data["ssh_user"] == "deployer" and data["kontur_target"] is t


def test_production_store_is_kontur_secrets_unless_given(region, tmp_path, monkeypatch):
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "env-store"))
    assert target.resolve(region).secrets == tmp_path / "env-store"
    assert target.resolve(region, secrets_dir=tmp_path / "given").secrets == tmp_path / "given"


def test_the_lab_reaches_lab_addresses_with_the_labs_key_as_root_by_default(region, lab):
    t = target.resolve(region, lab=True)
    assert t.lab and t.lab_state is not None
    lab_addr = lab.hosts["onco-lami"].address
    assert t.address("onco-lami") == lab_addr != region.nodes["onco-lami"].address
    ssh = t.ssh("onco-lami")
    assert (ssh.user, ssh.key, ssh.known_hosts, ssh.sudo, ssh.port) == \
        ("root", lab.ssh_key, lab.known_hosts, False, 2222)
    assert t.secrets == default_dir(region.region.name, lab=True)
    data = t.pyinfra_data("onco-lami")
    assert (data["ssh_hostname"], data["ssh_port"], data["kontur_lab"]) == (lab_addr, 2222, True)
    assert "_sudo" not in data


def test_the_lab_honours_a_non_root_sudo_user_from_the_environment(region, lab, monkeypatch):
    monkeypatch.setenv("KONTUR_SSH_USER", "operator")
    monkeypatch.setenv("KONTUR_SSH_SUDO", "1")
    monkeypatch.setenv("KONTUR_SSH_KEY", "/not/the/lab/key")     # the lab's own key stays
    t = target.resolve(region, lab=True)
    ssh = t.ssh("tsami")
    assert (ssh.user, ssh.sudo, ssh.key) == ("operator", True, lab.ssh_key)
    assert ssh.argv("198.18.0.9", "true")[-3:] == ["sudo", "-n", "true"]
    assert t.pyinfra_data("tsami")["_sudo"] is True


def test_the_lab_with_secrets_given_uses_them(region, lab, tmp_path):
    assert target.resolve(region, lab=True, secrets_dir=tmp_path / "mine").secrets == tmp_path / "mine"


def test_refusals_no_lab_another_region_a_node_without_a_host(region, lab, tmp_path, monkeypatch):
    other = LabState(region_name="small", inventory="/x/small.yaml", address_map={}, status="up")
    save_state(other)
    with pytest.raises(InvalidInput, match=r"the running lab is of region 'small'.*-i /x/small.yaml"):
        target.resolve(region, lab=True)
    save_state(LabState(**{**lab.to_dict(), "hosts": {}, "modalities": {}, "mis": {}, "apt": None}))
    t = target.resolve(region, lab=True)
    with pytest.raises(InvalidInput, match="have no lab host; bring them up with: kontur lab up"):
        t.require_hosts()
    with pytest.raises(KonturError, match="serves no package repository"):
        t.apt_repository()
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "none"))
    with pytest.raises(KonturError, match="no lab is running"):
        target.resolve(region, lab=True)


def test_a_missing_store_is_refused_with_what_to_do(region, tmp_path):
    t = target.resolve(region, secrets_dir=tmp_path / "none")
    with pytest.raises(InvalidInput, match=r"secrets store .*none does not exist; run `kontur render`"):
        t.existing_store()
    assert not (tmp_path / "none").exists()


def test_the_labs_bundle_carries_the_labs_repository_instead_of_the_mirror(region, lab, tmp_path):
    t = target.resolve(region, lab=True, secrets_dir=tmp_path / "s")
    files = {f.path: f for f in t.render_node("onco-lami", t.store()).files}
    assert APT_SOURCE not in files
    assert files[LAB_KEYRING].content == Path(lab.apt.keyring).read_bytes()
    assert files[LAB_SOURCE].content.decode().splitlines()[-1] == SOURCE_LINE
    prod = {f.path for f in target.resolve(region, secrets_dir=tmp_path / "s").render_node(
        "onco-lami", SecretStore(tmp_path / "s")).files}
    assert (APT_SOURCE in prod) == bool(region.region.package_mirror)
    assert LAB_SOURCE not in prod


def test_render_lab_writes_exactly_what_the_deploy_uploads(region, lab, tmp_path, monkeypatch):
    """``kontur render --lab`` and the deploy's bundle (deploys/node.py, from the host data
    host_groups makes) are one rendering: same files, same bytes."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_host, ctx_state

    monkeypatch.syspath_prepend(str(REPO))          # deploys/ (as pyinfra runs it)
    from deploys import node as node_ctx
    from kontur.deploy import host_groups

    secrets = tmp_path / "s"
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "kontur", "render", "--lab", "-i", str(EXAMPLE), "--out", str(out),
                        "--secrets", str(secrets), "--node", "onco-lami"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    written = {str(f.relative_to(out / "onco-lami")): f.read_bytes()
               for f in (out / "onco-lami").rglob("*") if f.is_file() and f.name != "manifest.json"}
    assert "etc/apt/sources.list.d/kontur-lab.list" in written

    groups = host_groups(EXAMPLE, lab=True, secrets_dir=secrets, nodes=["onco-lami"])
    names = [(n, d) for hosts in groups.values() for n, d in hosts]
    inv = Inventory((names, {}))
    state = State(check_for_changes=True)
    state.init(inv, Config())
    node_ctx.reset()
    with ctx_state.use(state), ctx_host.use(inv.get_host("onco-lami")):
        ctx = node_ctx.context()
    deployed = {f.path.lstrip("/"): f.content for f in ctx.bundle.files}
    assert deployed == written
    assert [f.path for f in ctx.apt.files] == ["/" + p for p in ("etc/apt/keyrings/kontur-lab.gpg",
                                                                 "etc/apt/sources.list.d/kontur-lab.list")]


@pytest.mark.parametrize("argv", [["quarantine", "list"], ["quarantine", "release", "1.2.3", "--reason", "x"],
                                  ["study", "status", "A1"], ["study", "shares"], ["study", "unshare", "1"],
                                  ["check"]])
def test_node_api_commands_take_their_store_from_secrets(argv, tmp_path):
    """--secrets DIR is the store of every command that talks to nodes (before: only the default)."""
    missing = tmp_path / "no-store"
    p = subprocess.run([sys.executable, "-m", "kontur", *argv, "-i", str(EXAMPLE), "--secrets", str(missing)],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"the secrets store {missing} does not exist" in p.stderr and "Traceback" not in p.stderr
    assert not missing.exists()


def test_a_devices_lab_namespace_comes_from_the_lab_none_in_production(region, lab, tmp_path):
    from kontur.lab.state import ModalityInfo
    device = region.hospitals["onco"].modalities[0].aet if "onco" in region.hospitals else \
        next(m.aet for h in region.hospitals.values() for m in h.modalities)
    save_state(LabState(**{**lab.to_dict(), "hosts": lab.hosts, "apt": lab.apt,
                           "modalities": {device: ModalityInfo(address="198.18.0.77", netns="ns-dev")}}))
    t = target.resolve(region, lab=True)
    assert t.device_netns(device) == "ns-dev"
    assert t.device_netns("NOT-A-DEVICE") is None
    assert target.resolve(region, secrets_dir=tmp_path / "s").device_netns(device) is None


def test_the_labs_secrets_live_where_the_lab_lives_even_with_an_empty_variable(monkeypatch):
    """One definition of the lab's directory (kontur.lab.config.lab_dir): the secrets store follows it,
    also when KONTUR_LAB_DIR is set but empty (it once became a relative 'secrets' folder)."""
    from kontur.lab.config import lab_dir
    monkeypatch.setenv("KONTUR_LAB_DIR", "")
    assert default_dir("example", lab=True) == lab_dir() / "secrets" == Path("/var/lib/kontur/lab/secrets")
    monkeypatch.setenv("KONTUR_LAB_DIR", "/srv/lab-x")
    assert default_dir("example", lab=True) == Path("/srv/lab-x/secrets")
