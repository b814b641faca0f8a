# SPDX-License-Identifier: AGPL-3.0-or-later
"""End-to-end tests of the region lab (R16).

Most run in the small test region (``lab``); the tests about the whole
region run last, in the example region (``example_lab``), and end with
``kontur lab down`` and a search for anything it left behind.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kontur.inventory import EXAMPLE_INVENTORY, load
from kontur.lab import fs, hosts, net
from kontur.lab.config import BRIDGE, NETWORK, NFT_TABLE, lab_dir
from kontur.lab.proc import alive
from kontur.lab.pytest_fixtures import SMALL_INVENTORY
from kontur.lab.state import lab_region, load_state, ssh_command
from kontur.packages import NODE_PACKAGES
from kontur.secrets import default_dir

pytestmark = pytest.mark.lab

#: the installed command, next to this Python
KONTUR = str(Path(sys.executable).parent / "kontur")
CT = Path(__import__("pydicom").data.get_testdata_file("CT_small.dcm"))


def kontur(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command line, as a user runs it."""
    return subprocess.run([KONTUR, *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy())


def on_host(state, node: str, command: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(ssh_command(state, node, command), check=False, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


def tcp_open(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def in_netns(netns: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run Python code inside a lab namespace (a modality's, say)."""
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code],
                          check=False, capture_output=True, text=True, timeout=timeout)


# --- the small region ---------------------------------------------------------------

def test_lab_region_puts_every_inventory_address_on_the_lab_network(lab):
    region = load(SMALL_INVENTORY)
    assert set(lab.address_map) == set(region.all_addresses())
    mapped = lab_region(region, lab)
    for node, spec in mapped.nodes.items():
        assert spec.address == lab.hosts[node].address
        assert ipaddress.IPv4Address(spec.address) in NETWORK
    for h in mapped.hospitals.values():
        for m in h.modalities:
            assert m.host == lab.modalities[m.aet].address
        if h.mis:
            assert ipaddress.IPv4Address(h.mis.host) in NETWORK


def test_hosts_have_no_route_but_the_lab_network(lab):
    for node in lab.hosts:
        cp = on_host(lab, node, "ip -4 route show; ip -6 route show")
        assert cp.returncode == 0, cp.stderr
        routes = [line for line in cp.stdout.splitlines() if line.strip()]
        assert not any(line.startswith("default") for line in routes), routes
        for line in routes:
            dest = line.split()[0]
            if ":" in dest:     # IPv6: loopback only
                assert dest in ("::1", "::1/128"), line
            else:
                assert ipaddress.IPv4Network(dest).subnet_of(NETWORK), line


def test_every_modality_namespace_reaches_its_node(lab):
    for aet, m in lab.modalities.items():
        node = lab.hosts[m.node]
        cp = in_netns(m.netns, "import socket,sys\n"
                      f"s = socket.create_connection(({node.address!r}, {node.ssh_port}), timeout=5)\n"
                      "sys.stdout.write(s.recv(64).decode(errors='replace'))")
        assert cp.returncode == 0, f"{aet} cannot reach {m.node}: {cp.stderr}"
        assert cp.stdout.startswith("SSH-"), cp.stdout
        own = subprocess.run(["ip", "-n", m.netns, "-4", "-o", "addr", "show", "eth0"],
                             check=False, capture_output=True, text=True).stdout
        assert f" {m.address}/" in own


def test_send_delivers_dicom_from_the_modality_address_to_the_node(lab, tmp_path):
    # No Orthanc yet at this stage: a DCMTK storescp plays the node's archive,
    # listening in the node's network namespace on the inventory's DICOM port.
    region = load(SMALL_INVENTORY)
    node = "city-lami"
    port = region.ports(node).dicom
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(["ip", "netns", "exec", lab.hosts[node].netns, "storescp", "-aet",
                            region.nodes[node].aet, "-od", str(received),
                            "-xcr", "echo CALLING #a FROM #r", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            if tcp_open(lab.hosts[node].address, port, 0.2):
                break
            time.sleep(0.1)
        folder = tmp_path / "study"
        folder.mkdir()
        (folder / "one.dcm").write_bytes(CT.read_bytes())
        cp = kontur("lab", "send", "CITY_CT1", str(folder))
        assert cp.returncode == 0, cp.stderr
        assert "1 of 1 file(s) stored" in cp.stdout
    finally:
        scp.send_signal(signal.SIGTERM)
        log, _ = scp.communicate(timeout=10)
    assert len(list(received.iterdir())) == 1
    # the association came from the modality's lab address, with its AE title
    assert f"CALLING CITY_CT1 FROM {lab.modalities['CITY_CT1'].address}" in log, log


def test_send_fails_clearly_when_nothing_listens(lab):
    cp = kontur("lab", "send", "RURAL_CR1", str(CT))
    assert cp.returncode == 1
    assert "storescu failed" in cp.stderr and "Association Request Failed" in cp.stderr


def test_send_refuses_an_unknown_modality(lab):
    cp = kontur("lab", "send", "NO_SUCH_AET", str(CT))
    assert cp.returncode == 2
    assert "no modality 'NO_SUCH_AET'" in cp.stderr and "CITY_CT1" in cp.stderr


def mllp_exchange(code_host: str, message: str) -> str:
    """Python source for a raw-socket MLLP client (no HL7 library)."""
    return ("import socket,sys\n"
            f"s = socket.create_connection(({code_host!r}), timeout=10)\n"
            f"s.sendall(b'\\x0b' + {message!r}.encode('utf-8') + b'\\x1c\\x0d')\n"
            "buf = b''\n"
            "while not buf.endswith(b'\\x1c\\x0d'):\n"
            "    chunk = s.recv(4096)\n"
            "    if not chunk: break\n"
            "    buf += chunk\n"
            "sys.stdout.buffer.write(buf)\n")


def test_mis_records_a_message_a_lab_node_sends(lab):
    mis = lab.mis["city"]
    control = f"K{time.time_ns() % 10**12}"
    message = ("MSH|^~\\&|ORTHANC|CITY_LAMI|MIS|CITY|20250101120000||ORU^R01|" + control + "|P|2.5\r"
               "PID|1||77001^^^CITY||Иванов^Иван^Иванович||19700101|M\r"
               "OBR|1||1.2.3.4|CT^КТ органов грудной клетки")
    code = mllp_exchange((mis.address, mis.port), message)
    # the client runs on the LAMI host itself, over SSH, with the host's own python3
    cp = subprocess.run(ssh_command(lab, "city-lami", "python3", "-"), input=code.encode(),
                        check=False, capture_output=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    ack = cp.stdout.decode()
    assert ack.startswith("\x0bMSH|") and ack.endswith("\x1c\r")
    assert f"MSA|AA|{control}" in ack

    cp = kontur("lab", "mis-log", "city", "--json")
    assert cp.returncode == 0, cp.stderr
    entries = [json.loads(line) for line in cp.stdout.splitlines()]
    mine = [e for e in entries if e["control_id"] == control]
    assert len(mine) == 1
    assert mine[0]["peer"] == lab.hosts["city-lami"].address
    assert mine[0]["type"] == "ORU^R01" and mine[0]["ack"] == "AA"
    assert "Иванов^Иван^Иванович" in mine[0]["message"]
    human = kontur("lab", "mis-log", "city")
    assert control in human.stdout and "PID|1||77001" in human.stdout


def test_mis_log_of_a_hospital_without_mis_is_a_clear_error(lab):
    cp = kontur("lab", "mis-log", "rural")
    assert cp.returncode == 2
    assert "has no MIS" in cp.stderr and "city" in cp.stderr


def test_apt_repository_is_signed_and_carries_every_node_package(lab):
    node = "rural-gw"
    key = Path(lab.apt.keyring).read_bytes()
    put_key = subprocess.run(ssh_command(lab, node, "mkdir -p /etc/apt/keyrings && "
                                         "cat > /etc/apt/keyrings/kontur-lab.gpg"),
                             check=False, input=key, capture_output=True, timeout=60)
    assert put_key.returncode == 0, put_key.stderr
    try:
        script = (f"echo '{lab.apt.source_line}' > /etc/apt/sources.list.d/kontur-lab.list && "
                  "apt-get update 2>&1 && apt-get install --simulate --yes "
                  + " ".join(NODE_PACKAGES) + " 2>&1")
        cp = on_host(lab, node, script, timeout=300)
        assert cp.returncode == 0, cp.stdout[-3000:]
        assert "NO_PUBKEY" not in cp.stdout and "not signed" not in cp.stdout
        assert re.search(r"^Inst orthanc ", cp.stdout, re.MULTILINE), cp.stdout[-2000:]
    finally:
        on_host(lab, node, "rm -f /etc/apt/sources.list.d/kontur-lab.list /etc/apt/keyrings/kontur-lab.gpg; "
                           "rm -rf /var/lib/apt/lists/*; mkdir -p /var/lib/apt/lists/partial")


def test_cut_partitions_a_node_and_heal_restores_it(lab):
    node = "rural-gw"
    h = lab.hosts[node]
    assert tcp_open(h.address, h.ssh_port)
    cp = kontur("lab", "cut", node)
    assert cp.returncode == 0, cp.stderr
    try:
        assert not tcp_open(h.address, h.ssh_port, timeout=2)
        # nor can another lab host reach it: a partition, not a host firewall
        probe = on_host(lab, "tsami", f"timeout 3 bash -c 'echo > /dev/tcp/{h.address}/{h.ssh_port}'")
        assert probe.returncode != 0
        st = kontur("lab", "status", "--json")
        rows = {r["node"]: r for r in json.loads(st.stdout)["hosts"]}
        assert rows[node]["link"] == "cut" and rows[node]["running"]
        assert all(r["link"] == "up" for n, r in rows.items() if n != node)
    finally:
        heal = kontur("lab", "heal", node)
    assert heal.returncode == 0, heal.stderr
    for _ in range(50):
        if tcp_open(h.address, h.ssh_port, timeout=1):
            break
        time.sleep(0.2)
    assert on_host(lab, node, "hostname").stdout.strip() == node


def test_up_again_with_the_same_inventory_changes_nothing(lab):
    """`kontur lab up` on a running lab follows its inventory (issue 14); unchanged, it touches nothing."""
    before = load_state()
    cp = kontur("lab", "up", "-i", str(SMALL_INVENTORY))
    assert cp.returncode == 0, cp.stderr
    assert "already matches the inventory; nothing changed" in cp.stderr + cp.stdout
    after = load_state()
    assert after is not None and after.to_dict() == before.to_dict()
    assert all(alive(h.pid, h.start_time) for h in after.hosts.values())


def test_up_with_another_regions_inventory_on_a_running_lab_exits_2_and_changes_nothing(lab):
    before = load_state()
    cp = kontur("lab", "up", "-i", str(EXAMPLE_INVENTORY))
    assert cp.returncode == 2
    assert f"a lab of region {before.region_name} is up" in cp.stderr and "kontur lab down" in cp.stderr
    assert "Traceback" not in cp.stderr
    after = load_state()
    assert after is not None and after.to_dict() == before.to_dict()
    assert all(alive(h.pid, h.start_time) for h in after.hosts.values())


def test_a_host_that_fails_to_join_the_running_lab_is_removed_and_the_rest_keeps_running(lab, tmp_path):
    """`kontur lab up` following an inventory with a new hospital, its host never answering (a boot timeout
    of a millisecond): exit 1 naming the cause, and the lab is exactly as before -- its state, its hosts."""
    grown = tmp_path / "grown.yaml"
    grown.write_text(SMALL_INVENTORY.read_text(encoding="utf-8"), encoding="utf-8")
    cp = kontur("inventory", "add-hospital", "gkb9", "-i", str(grown), "--type", "1", "--title", "ГКБ №9",
                "--network", "10.43.9.0/24", "--address", "10.43.9.10", "--aet", "GKB9_LAMI",
                "--staff-name", "Иванов Иван Иванович", "--staff-position", "инженер",
                "--work-phone", "+7 3842 00-09-10", "--mobile-phone", "+7 900 000-09-10")
    assert cp.returncode == 0, cp.stderr
    before = load_state()
    env = dict(os.environ, KONTUR_LAB_BOOT_TIMEOUT="0.001")
    cp = subprocess.run([KONTUR, "lab", "up", "-i", str(grown)], check=False, capture_output=True, text=True,
                        timeout=300, env=env)
    assert cp.returncode == 1, cp.stderr
    assert "gkb9-lami" in cp.stderr and "removing what it had added" in cp.stderr, cp.stderr
    assert "Traceback" not in cp.stderr
    after = load_state()
    assert after.to_dict() == before.to_dict()
    assert all(alive(h.pid, h.start_time) for h in after.hosts.values())
    assert not net.netns_exists("kl-gkb9-lami")
    assert not (Path(after.lab_dir) / "hosts" / "gkb9-lami").exists()


def test_a_lab_from_another_lab_directory_is_named_not_touched(lab, tmp_path):
    """Lab names are machine-wide: commands run with another KONTUR_LAB_DIR say
    where the running lab lives, and neither bring it down nor build a second one."""
    before = load_state()
    other = dict(os.environ, KONTUR_LAB_DIR=str(tmp_path / "other-lab"))
    hint = f"KONTUR_LAB_DIR={lab_dir()}"
    for args, code in ((("lab", "status"), 1), (("lab", "down"), 1), (("lab", "up", "-i", str(SMALL_INVENTORY)), 2)):
        cp = subprocess.run([KONTUR, *args], check=False, capture_output=True, text=True, timeout=120, env=other)
        assert cp.returncode == code, (args, cp.returncode, cp.stderr)
        assert hint in cp.stderr and "Traceback" not in cp.stderr, (args, cp.stderr)
        assert "ip link del" not in cp.stderr            # never the advice to remove another lab by hand
    after = load_state()
    assert after is not None and after.to_dict() == before.to_dict()
    assert all(alive(h.pid, h.start_time) for h in after.hosts.values())


# --- the example region (run last: see conftest) ------------------------------------

def test_every_example_node_answers_over_ssh_at_its_own_address(example_lab):
    region = load(EXAMPLE_INVENTORY)
    assert set(example_lab.hosts) == set(region.nodes)
    addresses = [h.address for h in example_lab.hosts.values()]
    assert len(set(addresses)) == len(addresses)
    for node, h in example_lab.hosts.items():
        assert h.address == example_lab.address_map[region.nodes[node].address]
        cp = on_host(example_lab, node, "hostname; ip -4 -o addr show dev eth0")
        assert cp.returncode == 0, f"{node}: {cp.stderr}"
        name, addr_line = cp.stdout.splitlines()[:2]
        assert name == node
        assert f" {h.address}/24 " in addr_line


def test_every_example_host_runs_in_a_cgroup_of_its_own(example_lab):
    # else their systemds would manage (and clean up) one another's units
    def unified(pid: int) -> str:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        return next(line.split(":", 2)[2] for line in lines if line.startswith("0::"))
    paths = {node: unified(h.pid) for node, h in example_lab.hosts.items()}
    assert len(set(paths.values())) == len(paths), paths
    assert all(f"/kontur-lab/{example_lab.lab_id}/{node}/" in p for node, p in paths.items()), paths


def test_status_shows_every_example_node_up(example_lab):
    deadline = time.monotonic() + 120
    while True:
        cp = kontur("lab", "status", "--json")
        report = json.loads(cp.stdout)
        states = {h["node"]: h["systemd"] for h in report["hosts"]}
        if not any(s in ("starting", "initializing") for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert cp.returncode == 0, cp.stderr
    assert report["healthy"] is True
    assert {h["node"] for h in report["hosts"]} == set(example_lab.hosts)
    for h in report["hosts"]:
        assert h["running"] and h["link"] == "up", h
        if h["systemd"] != "running":
            failed = on_host(example_lab, h["node"], "systemctl --failed --no-legend; "
                             "journalctl -b -p warning --no-pager | tail -30").stdout
            pytest.fail(f"{h['node']}: systemd is {h['systemd']}:\n{failed}")
    assert {m["aet"] for m in report["modalities"]} == set(example_lab.modalities)
    assert all(m["present"] for m in report["modalities"])
    assert {m["hospital"] for m in report["mis"]} == set(example_lab.mis)
    assert all(m["running"] for m in report["mis"])
    table = kontur("lab", "status")
    for node, h in example_lab.hosts.items():
        assert re.search(rf"{re.escape(node)}\s.*{re.escape(h.address)}\s.*{re.escape(h.inventory_address)}",
                         table.stdout), node


def test_down_leaves_nothing_behind(example_lab):
    state = load_state()
    pids = [(r["pid"], r["start_time"], r["label"]) for r in state.resources if r["kind"] == "process"]
    netns = {h.netns for h in state.hosts.values()} | {m.netns for m in state.modalities.values()} \
        | {m.netns for m in state.mis.values()}
    links = {r["name"] for r in state.resources if r["kind"] == "link"}
    assert pids and netns and BRIDGE in links
    secrets = default_dir(state.region_name, lab=True)
    _leftover_store(secrets)            # whatever the lab's store holds (the deploys' CA, passwords)

    cp = kontur("lab", "down")
    assert cp.returncode == 0, cp.stderr

    assert load_state() is None
    assert not secrets.exists() and f"removed the lab's secrets store {secrets}" in cp.stderr, cp.stderr
    listed = subprocess.run(["ip", "netns", "list"], check=False, capture_output=True, text=True).stdout
    assert not [line for line in listed.splitlines() if line.split()[0] in netns or line.startswith("kl-")]
    ip_link = subprocess.run(["ip", "-o", "link"], check=False, capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in ip_link.splitlines()}
    assert not names & links, names & links
    assert not any(fs.mounts_under(Path(h.rootfs)) for h in state.hosts.values())
    assert not [m for m in fs.mounts() if m.startswith(str(lab_dir()))]
    assert not [p for p in pids if alive(p[0], p[1])]
    # no container of this lab runs (a machine shared with other labs may run theirs)
    nspawn = subprocess.run(["pgrep", "-x", "systemd-nspawn"], check=False, capture_output=True, text=True)
    ours = [pid for pid in nspawn.stdout.split() if str(lab_dir()) + "/" in cmdline(int(pid))]
    assert not ours, [cmdline(int(p)) for p in ours]
    assert not net.nft_table_exists(), NFT_TABLE
    cgroups = [mp / rel / "kontur-lab" / state.lab_id for mp, rel in hosts.cgroup_hierarchies()]
    assert not [d for d in cgroups if d.exists()], "cgroups left"
    assert not Path(state.known_hosts).exists()

    again = kontur("lab", "down")
    assert again.returncode == 0
    assert "nothing to do" in again.stdout


# --- lab up refusing and failing (no lab up; run after everything else) ---------------

def nothing_of_a_lab_exists() -> list[str]:
    left = []
    if net.link_exists(BRIDGE):
        left.append(f"link {BRIDGE}")
    left += [f"netns {n}" for n in net.list_netns() if n.startswith("kl-")]
    left += [f"link {n}" for n in os.listdir("/sys/class/net") if re.fullmatch(r"klv\d+", n)]
    left += [f"mount {m}" for m in fs.mounts() if m.startswith(str(lab_dir()) + "/")]
    if net.nft_table_exists():
        left.append(f"nft table {NFT_TABLE}")
    if load_state() is not None:
        left.append("state file")
    return left


def _leftover_store(d: Path) -> Path:
    """A lab store as a lab that crashed leaves it: a CA change-over half done for hosts gone."""
    d.mkdir(parents=True, exist_ok=True)
    marker = d / "left-by-an-earlier-lab"
    marker.write_text("a CA change-over under way, phase 2 of 3\n")
    return marker


def test_a_new_lab_starts_without_the_secrets_store_an_earlier_one_left(no_lab):
    """A lab that crashed (no `lab down`) left its store: a new lab's first deploy would push that old CA,
    and a change-over it had half done refused the next `kontur secrets rotate ca` (a CI failure)."""
    secrets = default_dir("small", lab=True)
    marker = _leftover_store(secrets)
    try:
        cp = kontur("lab", "up", "-i", str(SMALL_INVENTORY))
        assert cp.returncode == 0, cp.stderr
        assert not marker.exists(), "the earlier lab's store was kept"
        assert f"removed an earlier lab's secrets store {secrets}" in cp.stderr, cp.stderr
    finally:
        down = kontur("lab", "down")
    assert down.returncode == 0, down.stderr
    assert nothing_of_a_lab_exists() == []


def test_up_refuses_when_the_lab_network_is_already_taken(no_lab):
    # an address of 198.18.0.0/24 on some interface that no lab state accounts for
    marker = _leftover_store(default_dir("small", lab=True))
    subprocess.run(["ip", "link", "add", "kltaken0", "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "198.18.0.250/32", "dev", "kltaken0"], check=True)
        cp = kontur("lab", "up", "-i", str(SMALL_INVENTORY))
    finally:
        subprocess.run(["ip", "link", "del", "kltaken0"], check=False)
    assert cp.returncode == 2, cp.stderr
    assert "198.18.0.250" in cp.stderr and "kltaken0" in cp.stderr and "Nothing was changed" in cp.stderr
    assert nothing_of_a_lab_exists() == []
    assert marker.exists(), "a refused lab up removed the lab's secrets store"
    fs.remove_tree(marker.parent)


def test_up_that_fails_midway_rolls_back_everything(no_lab):
    # the repository port is taken on every address, so the lab's HTTP server
    # cannot start -- after the bridge, namespaces and links were made
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        cp = subprocess.run([KONTUR, "lab", "up", "-i", str(SMALL_INVENTORY)], check=False, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "KONTUR_LAB_REPO_PORT": str(port)})
    finally:
        blocker.close()
    assert cp.returncode == 1, cp.stderr
    assert "HTTP server" in cp.stderr and "Address already in use" in cp.stderr
    assert "Traceback" not in cp.stderr
    assert nothing_of_a_lab_exists() == []


def test_down_cleans_up_after_an_up_that_was_killed(no_lab):
    up = subprocess.Popen([KONTUR, "lab", "up", "-i", str(SMALL_INVENTORY)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        # kill kontur itself once it has started booting hosts: no rollback can run
        for _ in range(600):
            state = load_state()
            if state and any(r["kind"] == "process" and r["label"].startswith("host ") for r in state.resources):
                break
            if up.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        up.kill()
        up.wait(10)
    left = load_state()
    assert left is not None and left.status == "starting"
    cp = kontur("lab", "up", "-i", str(SMALL_INVENTORY))
    assert cp.returncode == 2 and "half-built" in cp.stderr
    cp = kontur("lab", "down")
    assert cp.returncode == 0, cp.stderr
    assert nothing_of_a_lab_exists() == []
    ours = [line for line in subprocess.run(["ps", "-eo", "args"], check=False, capture_output=True,
                                            text=True).stdout.splitlines() if str(lab_dir()) + "/" in line]
    assert not ours, ours
