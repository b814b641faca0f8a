# SPDX-License-Identifier: AGPL-3.0-or-later
"""The lab's parts that need no root: address plan, apt sources, the MIS
listener on loopback, the state file, refusals before anything is built."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kontur.errors import InvalidInput
from kontur.inventory import EXAMPLE_INVENTORY, load
from kontur.lab import base, mis, ops, repo
from kontur.lab.config import NETWORK
from kontur.lab.plan import CAPACITY, make_plan
from kontur.lab.state import (
    LabState,
    lab_region,
    load_state,
    pyinfra_hosts,
    save_state,
    ssh_command,
)

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"


# --- the address plan ----------------------------------------------------------------

def test_plan_maps_every_inventory_address_into_the_lab_network_in_order():
    region = load(EXAMPLE_INVENTORY)
    plan = make_plan(region)
    inv = region.all_addresses()
    assert list(plan.address_map) == inv
    assert list(plan.address_map.values()) == [f"198.18.0.{i + 2}" for i in range(len(inv))]
    assert all(ipaddress.IPv4Address(a) in NETWORK for a in plan.address_map.values())
    # nodes first, in inventory order
    assert [plan.nodes[n].address for n in region.nodes] == [f"198.18.0.{i + 2}" for i in range(len(region.nodes))]
    assert make_plan(region).address_map == plan.address_map      # deterministic


def test_plan_names_fit_the_kernel_limits():
    plan = make_plan(load(EXAMPLE_INVENTORY))
    assert len({ep.netns for ep in plan.endpoints}) == len(plan.endpoints)
    assert len({ep.veth for ep in plan.endpoints}) == len(plan.endpoints)
    assert all(len(ep.veth) <= 15 for ep in plan.endpoints)
    assert plan.nodes["onco-lami"].netns == "kl-onco-lami"
    hk, ep = plan.modalities["ONCO_CT1"]
    assert hk == "onco" and ep.netns.startswith("kl-m") and ep.kind == "modality"
    port, ep = plan.mis["onco"]
    assert port == 2575 and ep.netns.startswith("kl-mis") and ep.inventory_address == "10.42.1.5"


def test_plan_refuses_a_region_bigger_than_the_lab_network():
    region = load(EXAMPLE_INVENTORY)
    data = region.model_dump(mode="json")
    mods = data["hospitals"]["onco"]["modalities"]
    template = mods[0]
    for i in range(CAPACITY):
        mods.append(dict(template, aet=f"X{i}", name=f"x{i}", host=str(ipaddress.IPv4Address("10.42.100.0") + i)))
    big = type(region).model_validate(data)
    with pytest.raises(InvalidInput, match="holds 253"):
        make_plan(big)


def test_plan_refuses_a_node_name_that_is_not_a_host_name():
    # load() never lets such a name through (below); the plan checks again for
    # regions built in code
    region = load(SMALL)
    odd = type(region).model_construct(**{**dict(region), "nodes": {"Bad_Node": region.nodes["tsami"]}})
    with pytest.raises(InvalidInput, match="not a valid host name"):
        make_plan(odd)


def test_lab_up_with_a_bad_node_name_exits_2_before_touching_anything(tmp_path):
    text = SMALL.read_text(encoding="utf-8").replace("  rural-gw:\n", "  Rural_GW:\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    cp = subprocess.run([sys.executable, "-m", "kontur", "lab", "up", "-i", str(bad)],
                        check=False, capture_output=True, text=True, timeout=60,
                        env={**os.environ, "KONTUR_LAB_DIR": str(tmp_path / "lab")})
    assert cp.returncode == 2
    assert "Rural_GW" in cp.stderr and "host name" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert not (tmp_path / "lab").exists()


# --- refusals --------------------------------------------------------------------------

def test_not_root_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ops.LabRefused) as exc:
        ops.check_root()
    assert exc.value.exit_code == 2
    assert "root" in exc.value.message


def test_missing_programs_name_their_debian_packages(monkeypatch):
    monkeypatch.setattr(ops.shutil, "which", lambda tool: None if tool in ("systemd-nspawn", "debootstrap") else "/x")
    with pytest.raises(ops.LabRefused) as exc:
        ops.check_tools()
    assert "systemd-nspawn (Debian package systemd-container)" in exc.value.message
    assert "debootstrap (Debian package debootstrap)" in exc.value.message
    assert "apt-get install debootstrap systemd-container" in exc.value.hint


# --- apt sources of this machine ------------------------------------------------------

def test_host_sources_read_deb822_and_one_line_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://sec.invalid/debian-security bookworm-security main\n"
        "deb http://other.invalid/x trixie main\n")
    pairs = base.debian_sources("bookworm", root=tmp_path)
    got = [(s.uri, suite, s.signed_by) for s, suite in pairs]
    assert got == [
        ("http://mirror.invalid/debian", "bookworm", "/usr/share/keyrings/debian-archive-keyring.gpg"),
        ("http://mirror.invalid/debian", "bookworm-updates", "/usr/share/keyrings/debian-archive-keyring.gpg"),
        ("http://sec.invalid/debian-security", "bookworm-security", "/k.gpg"),
    ]
    assert pairs[0][0].line("bookworm") == (
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.invalid/debian bookworm main")


def test_release_file_carries_the_hashes_apt_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(repo, "arch", lambda: "amd64")
    (tmp_path / "Packages").write_bytes(b"Package: x\n")
    text = repo._release_text(tmp_path, ["Packages"])
    sha = hashlib.sha256(b"Package: x\n").hexdigest()
    assert f" {sha} 11 Packages" in text
    assert "Architectures: amd64 all" in text and text.startswith("Origin: kontur lab\n")


def _tiny_repo(d: Path, monkeypatch) -> "repo.Repo":
    """A two-package repository signed with a throw-away lab key (real gpg)."""
    monkeypatch.setenv("KONTUR_LAB_CACHE", str(d / "cache"))
    monkeypatch.setattr(repo, "arch", lambda: "amd64")
    full = d / "repo"
    full.mkdir()
    stanzas = []
    for name in ("dcmtk", "orthanc"):
        deb = full / f"{name}_1.0_amd64.deb"
        deb.write_bytes(name.encode() * 100)
        stanzas.append(f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n"
                       f"Description: {name}\n more text\nFilename: ./{deb.name}\nSize: {deb.stat().st_size}")
    (full / "Packages").write_text("\n\n".join(stanzas) + "\n")
    try:
        fpr, keyring = repo._signing_key()
    finally:
        repo._stop_gpg_agent()
    return repo.Repo(full, keyring, fpr)


def test_mirror_variant_lacks_the_withheld_package_and_is_signed(tmp_path, monkeypatch):
    full = _tiny_repo(tmp_path, monkeypatch)
    variant = repo.build_variant(full, ["dcmtk"], tmp_path / "variant")
    assert repo.repo_package_names(variant) == {"orthanc"}
    assert sorted(p.name for p in variant.glob("*.deb")) == ["orthanc_1.0_amd64.deb"]
    assert (variant / "orthanc_1.0_amd64.deb").read_bytes() == b"orthanc" * 100
    packages = (variant / "Packages").read_bytes()
    assert " more text\n" in packages.decode()     # continuation lines kept
    assert f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages" in (variant / "Release").read_text()
    # the index verifies against the lab's public key alone, as a host's signed-by= does
    v = subprocess.run(["gpgv", "--keyring", str(full.keyring), str(variant / "InRelease")],
                       capture_output=True, text=True)
    assert v.returncode == 0, v.stderr
    # the full repository is untouched
    assert repo.repo_package_names(full.path) == {"dcmtk", "orthanc"}


def test_mirror_variant_refuses_a_package_the_repository_does_not_carry(tmp_path, monkeypatch):
    full = _tiny_repo(tmp_path, monkeypatch)
    with pytest.raises(InvalidInput, match="carries no package named nosuch"):
        repo.build_variant(full, ["nosuch"], tmp_path / "variant")
    assert not (tmp_path / "variant").exists()


def test_served_link_switches_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        for name in ("InRelease", "Release", "Release.gpg", "Packages"):
            (d / name).write_text(name)
    os.utime(a / "InRelease", (2_000_000_000, 2_000_000_000))     # served first, and "newer"
    link = tmp_path / "served"
    repo.set_served(link, a)
    assert link.resolve() == a.resolve()
    repo.set_served(link, b)
    assert link.resolve() == b.resolve() and not (tmp_path / "served.new").exists()
    # apt asks with If-Modified-Since: what is served now must look newer, in whole seconds
    assert int((b / "InRelease").stat().st_mtime) > 2_000_000_000


def test_deploy_explains_a_package_the_mirror_lacks():
    from kontur.deploy import _explain
    lab = _explain("E: Unable to locate package dcmtk", lab=True)
    assert "hint: the lab repository" in lab and "does not offer dcmtk" in lab and "kontur lab mirror" in lab
    real = _explain("E: Package 'orthanc' has no installation candidate", lab=False)
    assert "region.package_mirror" in real and "does not offer orthanc" in real
    assert _explain("E: something else", lab=False) == "E: something else"


def test_repository_carries_every_node_package():
    from kontur.packages import NODE_PACKAGES
    assert set(NODE_PACKAGES) <= set(repo.repo_packages())


# --- the MIS listener ---------------------------------------------------------------------

@pytest.fixture
def mis_server(tmp_path):
    log = tmp_path / "mis.jsonl"
    server = mis.make_server("127.0.0.1", 0, log, "KONTUR_LAB_MIS", "CITY")
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server.server_address, log
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


def exchange(address, payload: bytes) -> bytes:
    """A raw-socket MLLP client: send, read until every ACK frame has ended."""
    with socket.create_connection(address, timeout=5) as s:
        s.sendall(payload)
        buf = b""
        want = payload.count(b"\x1c\x0d")
        while buf.count(b"\x1c\x0d") < want:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf


def test_mis_acknowledges_and_records_every_message(mis_server):
    address, log = mis_server
    msg1 = "MSH|^~\\&|ORTHANC|CITY_LAMI|MIS|CITY|20250101||ORU^R01|C1|P|2.5\rPID|1||7^^^CITY||Петров^Пётр"
    msg2 = "MSH|^~\\&|ORTHANC|CITY_LAMI|MIS|CITY|20250101||ORM^O01|C2|P|2.5"
    # noise before the frame, two messages in one write: both framed out
    payload = b"noise" + b"\x0b" + msg1.encode() + b"\x1c\x0d" + b"\x0b" + msg2.encode() + b"\x1c\x0d"
    acks = exchange(address, payload).split(b"\x1c\x0d")
    assert b"MSA|AA|C1\r" in acks[0] and acks[0].startswith(b"\x0bMSH|^~\\&|KONTUR_LAB_MIS|CITY|ORTHANC|CITY_LAMI|")
    assert b"MSA|AA|C2\r" in acks[1]
    entries = mis.read_log(log)
    assert [e["control_id"] for e in entries] == ["C1", "C2"]
    assert entries[0]["type"] == "ORU^R01" and entries[0]["message"] == msg1 and entries[0]["peer"] == "127.0.0.1"
    assert all(json.loads(line) for line in log.read_text(encoding="utf-8").splitlines())


def test_mis_rejects_but_records_what_is_not_hl7(mis_server):
    address, log = mis_server
    ack = exchange(address, b"\x0bnot a message\x1c\x0d")
    assert b"MSA|AR" in ack
    (entry,) = mis.read_log(log)
    assert entry["ack"] == "AR" and entry["message"] == "not a message"


def test_mis_reads_cp1251_from_legacy_senders(mis_server):
    address, log = mis_server
    msg = "MSH|^~\\&|OLD|RIS|MIS|CITY|20250101||ADT^A01|L1|P|2.5\rPID|1||9||Сидоров"
    ack = exchange(address, b"\x0b" + msg.encode("cp1251") + b"\x1c\x0d")
    assert b"MSA|AA|L1" in ack
    (entry,) = mis.read_log(log)
    assert entry["charset"] == "cp1251" and "Сидоров" in entry["message"]


# --- the state file -----------------------------------------------------------------------

def sample_state(tmp_path) -> LabState:
    region = load(SMALL)
    plan = make_plan(region)
    from kontur.lab.state import AptInfo, HostInfo
    st = LabState(region_name="small", inventory=str(SMALL), address_map=plan.address_map, status="up",
                  ssh_key=str(tmp_path / "id"), known_hosts=str(tmp_path / "kh"), bridge_address="198.18.0.1",
                  apt=AptInfo("http://198.18.0.1:8765/", "/k.gpg",
                              "deb [signed-by=/etc/apt/keyrings/kontur-lab.gpg] http://198.18.0.1:8765/ ./"))
    for n, ep in plan.nodes.items():
        st.hosts[n] = HostInfo(address=ep.address, netns=ep.netns, pid=1, rootfs="/r", veth=ep.veth, ssh_port=22)
    return st


def test_state_round_trips_and_keeps_inventory_order(tmp_path):
    st = sample_state(tmp_path)
    path = tmp_path / "state.json"
    save_state(st, path)
    back = load_state(path)
    assert back.to_dict() == st.to_dict()
    assert list(back.hosts) == ["tsami", "research", "city-lami", "rural-gw"]
    assert load_state(tmp_path / "none.json") is None


def test_lab_region_and_connection_data(tmp_path):
    st = sample_state(tmp_path)
    region = lab_region(load(SMALL), st)
    assert region.nodes["city-lami"].address == st.hosts["city-lami"].address
    assert region.hospitals["city"].mis.host == st.address_map["10.43.1.5"]
    assert region.region.secure_network == "198.18.0.0/24"
    argv = ssh_command(st, "tsami", "hostname")
    assert argv[0] == "ssh" and argv[-2:] == [f"root@{st.hosts['tsami'].address}", "hostname"]
    assert f"UserKnownHostsFile={st.known_hosts}" in argv and "StrictHostKeyChecking=yes" in argv
    hosts = dict(pyinfra_hosts(st))
    assert hosts[st.hosts["rural-gw"].address]["kontur_node"] == "rural-gw"
    with pytest.raises(InvalidInput, match="not a node of the running lab"):
        ssh_command(st, "nope")


def test_the_lab_raises_the_inotify_limit_for_many_hosts_and_down_restores_it(tmp_path, monkeypatch):
    """20 hosts exhausted the machine's 128 inotify instances (the 20th never booted): up raises the
    limit only when the hosts need more, the ledger keeps the old value, teardown puts it back."""
    from kontur.lab import ops
    from kontur.lab.state import LabState

    limit = tmp_path / "max_user_instances"
    limit.write_text("128\n")
    monkeypatch.setattr(ops, "INOTIFY_LIMIT", limit)
    noted = []
    ledger = type("L", (), {"add": lambda self, *e: noted.extend(e)})()
    ops._make_inotify_room(8, ledger, lambda m: None)
    assert limit.read_text() == "128\n" and noted == []          # 8 hosts fit
    said = []
    ops._make_inotify_room(20, ledger, said.append)
    assert int(limit.read_text()) == ops.INOTIFY_MACHINE + 20 * ops.INOTIFY_PER_HOST > 128
    assert noted == [{"kind": "sysctl", "path": str(limit), "value": 128}] and "128 -> 248" in said[0]
    state = LabState(region_name="x", inventory="x", address_map={}, resources=noted)
    assert ops.teardown(state) == []
    assert limit.read_text() == "128"


def test_a_running_labs_plan_keeps_every_address_it_has_and_gives_new_ones_free_addresses():
    """`kontur lab up` on a running lab: a new hospital added to the inventory must not move
    any device or host the lab already runs (their namespaces and links are named after it)."""
    small = load(SMALL)
    data = small.model_dump(mode="json")
    del data["hospitals"]["rural"]
    del data["nodes"]["rural-gw"]
    before = type(small).model_validate(data)
    running = make_plan(before)
    grown = make_plan(small, keep=running.address_map)
    for inv, lab in running.address_map.items():
        assert grown.address_map[inv] == lab
    new = [inv for inv in small.all_addresses() if inv not in running.address_map]
    assert new and len({grown.address_map[i] for i in new}) == len(new)
    assert not {grown.address_map[i] for i in new} & set(running.address_map.values())
    # a fresh plan of the grown region would have moved the devices (nodes come first)
    fresh = make_plan(small)
    assert any(fresh.address_map[i] != lab for i, lab in running.address_map.items())
    # what the running lab lost frees its address for the next one
    shrunk = make_plan(before, keep=grown.address_map)
    assert shrunk.address_map == running.address_map
