# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur deploy`` end to end in the lab, on the small test region.

The tests run in file order and build on each other, like an operator's day:

1. the lab follows the region without its type-2 hospital (``kontur lab up``
   on the running lab removes the gateway's host), which deploys onto clean lab
   hosts (packages from the lab's repository only); a second deploy changes
   nothing; a deploy from a second control machine's own store is refused on
   every host until the region's store is imported there;
2. the planner adds the hospital (``kontur inventory add-hospital`` and
   ``add-modality``), ``kontur lab up`` adds its host and device to the running
   lab, and ``deploy --limit`` of the new gateway and the TsAMI rolls it out as
   production would: a study from the new device reaches the TsAMI, no other
   host restarts anything;
3. the deployed region is checked from outside: DICOM from inventory
   modalities only, mutual TLS with the regional CA on every inter-site
   endpoint, no default credentials, undeclared ports closed;
4. one hospital's modality list changes: ``--dry-run`` shows the diff without
   secrets and changes nothing, the deploy restarts that hospital's Orthanc only;
5. broken hosts (a port taken, PostgreSQL down, a package missing from the
   mirror) fail the deploy naming host, step and cause; a re-run after the
   fix succeeds.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kontur.inventory import load
from kontur.lab.state import lab_region, ssh_options
from kontur.pki import ensure_ca, operator_cert
from kontur.render.orthanc import SERVICE_USER
from kontur.secrets import SecretStore, default_dir

from deploy_helpers import REPO, deploy, follow, in_netns, kontur, on_host, unit_stamp

pytestmark = pytest.mark.lab

SMALL = Path(__file__).resolve().parents[1] / "data" / "small-region.yaml"
NEW_HOSPITAL = "rural"
NEW_NODE = "rural-gw"


# --- inventories and the first deploy ------------------------------------------------

@pytest.fixture(scope="module")
def inventories(tmp_path_factory) -> dict[str, Path]:
    """``before``: the small region without its type-2 hospital (the planner
    adds it later); ``work``: the file the planner edits."""
    d = tmp_path_factory.mktemp("inventory")
    before = d / "before.yaml"
    shutil.copy(SMALL, before)
    r = kontur("inventory", "remove-hospital", NEW_HOSPITAL, "-i", str(before))
    assert r.rc == 0, r.out
    assert NEW_NODE not in load(before).nodes
    work = d / "region.yaml"
    shutil.copy(before, work)
    return {"before": before, "work": work}


@pytest.fixture(scope="module")
def first_deploy(lab, inventories):
    # the lab runs the whole small region; it follows the inventory without the hospital
    hosts_before = {n: (h.pid, h.start_time) for n, h in lab.hosts.items()}
    r = follow(lab, inventories["work"])
    assert f"removed host: {NEW_NODE}" in r.out, r.out
    assert NEW_NODE not in lab.hosts and not any(m.hospital == NEW_HOSPITAL for m in lab.modalities.values())
    assert {n: (h.pid, h.start_time) for n, h in lab.hosts.items()} == \
        {n: v for n, v in hosts_before.items() if n != NEW_NODE}
    return deploy(inventories["work"])


@pytest.fixture(scope="module")
def store(lab):
    return SecretStore(default_dir(lab.region_name, lab=True))


@pytest.fixture(scope="module")
def region(lab, inventories, first_deploy):
    """The whole small region at its lab addresses (after the hospital is added)."""
    return lab_region(load(SMALL), lab)


def test_region_deploys_onto_clean_hosts(lab, first_deploy):
    r = first_deploy
    assert r.rc == 0, r.out
    assert (r.hosts, r.failed) == (3, 0), r.out
    assert r.changed > 0
    for node in ("tsami", "research", "city-lami"):
        assert any(ln.startswith(f"{node}: done") for ln in r.lines(node)), r.out


@pytest.mark.parametrize("node", ["tsami", "research", "city-lami"])
def test_packages_come_only_from_the_lab_repository(lab, first_deploy, node):
    p = on_host(lab, node, "ls /etc/apt/sources.list.d; test ! -e /etc/apt/sources.list && echo no-sources-list; "
                           "apt-cache policy orthanc | sed -n '/Version table/,$p'")
    assert p.returncode == 0, p.stderr
    assert "kontur-lab.list" in p.stdout and "no-sources-list" in p.stdout
    assert p.stdout.split().count("kontur-lab.list") == 1
    assert f"http://{lab.bridge_address}:" in p.stdout, p.stdout


def test_second_deploy_changes_nothing(lab, inventories, first_deploy):
    before = {n: unit_stamp(lab, n) for n in ("tsami", "research", "city-lami")}
    r = deploy(inventories["work"])
    assert r.rc == 0, r.out
    assert r.changed == 0, r.out
    assert "changed operations: 0" in r.out
    assert {n: unit_stamp(lab, n) for n in before} == before


def _deployed_state(lab, node: str):
    """What a deploy from another store would change: the CA, the node's certificate, its passwords."""
    p = on_host(lab, node, "sha256sum /etc/kontur/tls/ca.crt /etc/kontur/tls/node.crt /etc/kontur/store.json "
                           "/etc/orthanc/credentials.json")
    assert p.returncode == 0, p.stderr
    return unit_stamp(lab, node), p.stdout


def test_a_deploy_from_another_control_machine_is_refused_until_the_region_store_is_imported(
        lab, inventories, first_deploy, tmp_path):
    """Issue 14: a second operator's machine with a store of its own (never imported) would push a new CA
    and new passwords; the deploy is refused on every host before anything changes.  After `kontur secrets
    export` here and `import` there, the same deploy changes nothing."""
    work = inventories["work"]
    nodes = ("tsami", "research", "city-lami")
    before = {n: _deployed_state(lab, n) for n in nodes}
    second = tmp_path / "second-machine" / "secrets"
    r = deploy(work, "--secrets", str(second))
    assert r.rc == 2, r.out
    assert "refused: the secrets store" in r.out and "nothing was changed on any host" in r.out, r.out
    named = [ln for ln in r.out.splitlines() if "deployed with the regional CA" in ln]
    assert len(named) == 1 and set(named[0].split(":")[0].strip().split(", ")) == set(nodes), r.out
    assert "Traceback" not in r.out
    assert {n: _deployed_state(lab, n) for n in nodes} == before
    # the store moves as one encrypted file
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("rehearsal passphrase, not a real one\n")
    moved = tmp_path / "region.secrets"
    r = kontur("secrets", "export", "--lab", "-i", str(work), "--out", str(moved), "--passphrase-file", str(passphrase))
    assert r.rc == 0, r.out
    r = kontur("secrets", "import", "-i", str(work), "--secrets", str(second), str(moved),
               "--passphrase-file", str(passphrase))
    assert r.rc == 2 and "a different secrets store is already at" in r.out, r.out     # the refused deploy's
    r = kontur("secrets", "import", "-i", str(work), "--secrets", str(second), str(moved), "--replace",
               "--passphrase-file", str(passphrase))
    assert r.rc == 0 and "is kept at" in r.out, r.out
    r = deploy(work, "--secrets", str(second))
    assert r.rc == 0, r.out
    assert r.changed == 0, r.out
    assert {n: _deployed_state(lab, n) for n in nodes} == before


def _as_production(lab, work: Path, tmp_path: Path) -> tuple[Path, dict]:
    """The inventory as the lab runs it (kontur.lab.state.lab_region), written out -- lab addresses, the lab
    network for the region and its hospitals, the bridge as the admin network -- and the environment of a
    production deploy to it (the production SSH settings pointed at the lab's key and known hosts)."""
    import os
    text = work.read_text(encoding="utf-8")
    for inventory_address, lab_address in lab.address_map.items():
        text = re.sub(rf"(?<![\d.]){re.escape(inventory_address)}(?![\d.])", lab_address, text)
    text = re.sub(r"(secure_network|network): 10\.43\.[\d.]+/\d+", r"\1: 198.18.0.0/24", text)
    text = re.sub(r"- 10\.43\.0\.0/28", f"- {lab.bridge_address}/32", text)
    production = tmp_path / "production.yaml"
    production.write_text(text, encoding="utf-8")
    env = dict(os.environ, KONTUR_SSH_KEY=lab.ssh_key, KONTUR_KNOWN_HOSTS=lab.known_hosts,
               KONTUR_SECRETS=str(default_dir(lab.region_name, lab=True)), COLUMNS="200")
    env.pop("KONTUR_INVENTORY", None)
    return production, env


def test_a_production_deploy_shows_its_plan_and_asks_before_it_changes_anything(lab, inventories, first_deploy,
                                                                                 tmp_path):
    """The lab's hosts as production ones (an inventory with their addresses, the production SSH settings
    pointed at the lab's key): without a terminal the deploy is refused unless --yes; on a terminal it
    lists the hosts with their planned changes and, answered no, changes nothing (issue 14)."""
    import shlex
    production, env = _as_production(lab, inventories["work"], tmp_path)
    nodes = ("tsami", "research", "city-lami")
    before = {n: _deployed_state(lab, n) for n in nodes}
    argv = [sys.executable, "-m", "kontur", "deploy", "-i", str(production)]
    p = subprocess.run(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "asks before it changes them" in p.stderr and "--yes" in p.stderr
    assert "connecting" not in p.stdout                 # refused before any host was contacted
    # a file edited by hand on city-lami: the deploy has one thing to put back
    site = "/etc/nginx/sites-available/kontur.conf"
    assert on_host(lab, "city-lami", f"echo '# edited by hand' >> {site}").returncode == 0
    # on a terminal (script(1) gives it one), answered "n"
    p = subprocess.run(["script", "-qec", shlex.join(argv), "/dev/null"], cwd=REPO, env=env, input="n\n",
                       capture_output=True, text=True, timeout=600)
    shown = p.stdout.replace("\r", "")
    assert p.returncode == 1, shown
    planned = {n: int(c) for n, c in re.findall(r"^  ([\w-]+): (\d+)$", shown, re.M)}
    assert set(planned) == set(nodes) and planned["city-lami"] >= 1, shown
    assert planned["tsami"] == planned["research"] == 0, shown
    assert f"planned: {planned['city-lami']} operation(s) to change on 1 of 3 host(s):" in shown, shown
    assert "apply these changes to the hosts?" in shown, shown
    assert "nothing was changed: the deploy was not confirmed" in shown, shown
    assert {n: _deployed_state(lab, n) for n in nodes} == before
    assert "# edited by hand" in on_host(lab, "city-lami", f"cat {site}").stdout
    # --yes: no question, the file put back
    p = subprocess.run([*argv, "--yes"], cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "apply these changes" not in p.stdout, p.stdout
    assert f"changed operations: {planned['city-lami']}, failed: 0" in p.stdout, p.stdout
    assert "# edited by hand" not in on_host(lab, "city-lami", f"cat {site}").stdout


def test_a_node_deploys_as_an_operator_who_is_not_root_through_sudo(lab, inventories, first_deploy, tmp_path):
    """Issue 14: production SSH as a non-root user with sudo (`KONTUR_SSH_USER`, `KONTUR_SSH_SUDO=1`).  On
    city-lami an operator account `ops` may run anything through `sudo -n`; root's key is taken away for
    the test, so nothing can log in as root.  A file edited by hand is put back, a re-run changes nothing."""
    node, user = "city-lami", "ops"
    production, env = _as_production(lab, inventories["work"], tmp_path)
    env.update(KONTUR_SSH_USER=user, KONTUR_SSH_SUDO="1")
    pub = Path(lab.ssh_key + ".pub").read_text().strip()
    setup = (f"id -u {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}; "
             f"install -d -m 700 -o {user} -g {user} /home/{user}/.ssh; "
             f"echo '{pub}' > /home/{user}/.ssh/authorized_keys; "
             f"chown {user}: /home/{user}/.ssh/authorized_keys; chmod 600 /home/{user}/.ssh/authorized_keys; "
             f"echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{user}; chmod 440 /etc/sudoers.d/{user}; "
             "visudo -cq")
    p = on_host(lab, node, setup)
    assert p.returncode == 0, p.stdout + p.stderr
    site = "/etc/nginx/sites-available/kontur.conf"
    assert on_host(lab, node, f"echo '# edited by hand' >> {site}").returncode == 0
    # from here on root cannot log in: what the deploy does, it does as ops through sudo
    assert on_host(lab, node, "mv /root/.ssh/authorized_keys /root/.ssh/authorized_keys.away").returncode == 0
    as_ops = ["ssh", *ssh_options(lab, lab.host(node).ssh_port), f"{user}@{lab.host(node).address}"]
    try:
        root = subprocess.run(["ssh", *ssh_options(lab, lab.host(node).ssh_port), f"root@{lab.host(node).address}",
                               "true"], capture_output=True, text=True, timeout=60)
        assert root.returncode != 0                      # really no root login
        argv = [sys.executable, "-m", "kontur", "deploy", "-i", str(production), "--limit", node, "--yes"]
        p = subprocess.run(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"{node}: nginx: {site}" in p.stdout, p.stdout        # put back: a write as root, by sudo
        assert re.search(r"hosts: 1, changed operations: [1-9]\d*, failed: 0", p.stdout), p.stdout
        p2 = subprocess.run(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=600)
        assert p2.returncode == 0 and "hosts: 1, changed operations: 0, failed: 0" in p2.stdout, p2.stdout
        got = subprocess.run([*as_ops, "sudo", "-n", "cat", site], capture_output=True, text=True, timeout=60)
        assert got.returncode == 0 and "# edited by hand" not in got.stdout, got.stderr
        # the rendered files belong to their services, not to the operator who deployed them
        owners = subprocess.run([*as_ops, "sudo", "-n", "stat", "-c", "%U", site, "/etc/orthanc/orthanc.json"],
                                capture_output=True, text=True, timeout=60)
        assert user not in owners.stdout.split(), owners.stdout
    finally:
        subprocess.run([*as_ops, "sudo", "-n", "mv", "/root/.ssh/authorized_keys.away", "/root/.ssh/authorized_keys"],
                       capture_output=True, text=True, timeout=60)
    assert on_host(lab, node, "true").returncode == 0


def test_adding_a_hospital_to_the_running_lab_rolls_it_out_as_production_would(lab, inventories, first_deploy,
                                                                               tmp_path):
    """Issue 14: two inventory edits, `kontur lab up` (the running lab gains the gateway's host and the
    device), `kontur deploy --lab --limit NEW --limit tsami`: a study from the new device reaches the
    TsAMI, and no other lab host restarted anything."""
    from kontur import nodeapi
    from kontur.testing.dicom import make_study
    from kontur.testing.orthanc import wait_for
    work = inventories["work"]
    small = load(SMALL)
    h = small.hospitals[NEW_HOSPITAL]
    node = small.nodes[NEW_NODE]
    staff = h.staff[0]
    r = kontur("inventory", "add-hospital", NEW_HOSPITAL, "-i", str(work), "--type", "2", "--title", h.title,
               "--address", node.address, "--aet", node.aet, "--network", h.network,
               "--staff-name", staff.name, "--staff-position", staff.position,
               "--work-phone", staff.work_phone, "--mobile-phone", staff.mobile_phone)
    assert r.rc == 0, r.out
    for m in h.modalities:
        r = kontur("inventory", "add-modality", NEW_HOSPITAL, "-i", str(work), "--aet", m.aet, "--host", m.host,
                   "--modality", m.modality)
        assert r.rc == 0, r.out
    assert NEW_NODE in load(work).nodes

    untouched = ("research", "city-lami")
    units = ("orthanc.service", "nginx.service", "postgresql@15-main.service")
    before = {n: unit_stamp(lab, n, units) for n in untouched}
    hosts_before = {n: (h_.pid, h_.start_time) for n, h_ in lab.hosts.items()}
    tsami_before = unit_stamp(lab, "tsami")

    r = follow(lab, work)
    assert f"added host: {NEW_NODE}" in r.out and f"added device: {h.modalities[0].aet}" in r.out, r.out
    assert {n: (h_.pid, h_.start_time) for n, h_ in lab.hosts.items() if n != NEW_NODE} == hosts_before
    r = deploy(work, "--limit", NEW_NODE, "--limit", "tsami")
    assert r.rc == 0, r.out
    assert (r.hosts, r.failed) == (2, 0), r.out
    # the new node is up, the TsAMI (its peers changed) restarted, nobody else touched
    assert on_host(lab, NEW_NODE, "systemctl is-active orthanc nginx nftables").returncode == 0
    assert unit_stamp(lab, "tsami")["orthanc.service"] != tsami_before["orthanc.service"]

    # a study from the new device, as the hospital's CR would send it, reaches the TsAMI
    study = make_study(1, patient_id="R-100", patient_name="Васильева^Ольга", accession="GROW-1")
    f = tmp_path / "cr.dcm"
    f.write_bytes(study.instances[0].data)
    r = kontur("lab", "send", h.modalities[0].aet, str(f))
    assert r.rc == 0, r.out
    tsami = nodeapi.client_for(load(work), "tsami", lab=True)
    wait_for(lambda: tsami.post("tools/find", {"Level": "Study", "Query": {"AccessionNumber": "GROW-1"}}), 180,
             message="the new hospital's study at the TsAMI")

    for n in untouched:
        assert unit_stamp(lab, n, units) == before[n], n
    assert deploy(work).changed == 0


# --- the deployed region, checked from outside ----------------------------------------

def _modalities(region):
    return [(h.node, m.aet) for h in region.hospitals.values() if h.node for m in h.modalities]


def _echo(netns, calling, called, address, port):
    return in_netns(netns, ["timeout", "20", "echoscu", "-to", "3", "-aet", calling, "-aec", called,
                            address, str(port)])


def _store_scu(netns, calling, called, address, port, path):
    return in_netns(netns, ["timeout", "20", "storescu", "-to", "3", "-aet", calling, "-aec", called,
                            address, str(port), str(path)])


def test_inventory_modalities_echo_and_store(lab, region, dicom_file):
    for node, aet in _modalities(region):
        spec = region.nodes[node]
        netns = lab.modalities[aet].netns
        port = region.ports(node).dicom
        p = _echo(netns, aet, spec.aet, spec.address, port)
        assert p.returncode == 0, f"C-ECHO {aet} -> {spec.aet}: {p.stdout}"
    node, aet = _modalities(region)[0]
    spec = region.nodes[node]
    p = _store_scu(lab.modalities[aet].netns, aet, spec.aet, spec.address, region.ports(node).dicom, dicom_file)
    assert p.returncode == 0, f"C-STORE {aet} -> {spec.aet}: {p.stdout}"


def test_unknown_ae_title_is_refused(lab, region, dicom_file):
    for node, aet in _modalities(region):
        spec = region.nodes[node]
        netns = lab.modalities[aet].netns
        port = region.ports(node).dicom
        assert _echo(netns, "INTRUDER", spec.aet, spec.address, port).returncode != 0, f"{node}: C-ECHO"
        assert _store_scu(netns, "INTRUDER", spec.aet, spec.address, port, dicom_file).returncode != 0, \
            f"{node}: C-STORE"
        # the right modality calling the wrong AE title is refused too
        assert _echo(netns, aet, "NOT_" + spec.aet[:12], spec.address, port).returncode != 0


def test_address_not_in_the_inventory_is_refused(lab, region, dicom_file):
    """The MIS's address is in the inventory, but not as a modality: DICOM
    from it is refused even with a modality's AE title."""
    hk, mis = next(iter(lab.mis.items()))
    node = region.hospitals[hk].node
    spec = region.nodes[node]
    aet = region.hospitals[hk].modalities[0].aet
    port = region.ports(node).dicom
    assert _echo(mis.netns, aet, spec.aet, spec.address, port).returncode != 0
    assert _store_scu(mis.netns, aet, spec.aet, spec.address, port, dicom_file).returncode != 0


def test_the_pydicom_corpus_through_a_deployed_lami(lab, region):
    """Issue 10, bad input: every DICOM file of pydicom's test corpus sent by
    C-STORE from a modality's namespace to the deployed LAMI: each is stored
    and classified or refused; Orthanc stays up; the plugin's own counts and
    its log lines agree with what happened."""
    import pydicom

    from kontur import nodeapi
    from kontur.testing.orthanc import wait_for
    corpus = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))
    node = "city-lami"
    aet = region.hospitals[region.hospital_of(node)].modalities[0].aet
    spec = region.nodes[node]
    client = nodeapi.client_for(load(SMALL), node, lab=True)
    before = client.get("statistics")["CountInstances"]
    log_before = on_host(lab, node, "journalctl -u orthanc -o cat | grep -c 'ingest: instance left as received' || true")
    ingest_before = client.replication_status().get("ingest") or {}
    sent = refused = 0
    for f in corpus:
        p = _store_scu(lab.modalities[aet].netns, aet, spec.aet, spec.address, region.ports(node).dicom, f)
        sent, refused = (sent + 1, refused) if p.returncode == 0 else (sent, refused + 1)
    assert sent and refused, (sent, refused)
    assert on_host(lab, node, "systemctl is-active orthanc").stdout.strip() == "active"
    stored = client.get("statistics")["CountInstances"] - before
    assert 0 < stored <= sent               # a file stored twice (one SOP Instance UID) counts once
    ingest = client.replication_status()["ingest"]
    seen = ingest["seen"] - ingest_before.get("seen", 0)
    assert seen >= stored and ingest["failed"] == 0
    assert ingest["seen"] == ingest["changed"] + ingest["unchanged"] + ingest["left_as_received"]
    logged = int(on_host(lab, node, "journalctl -u orthanc -o cat | grep -c 'ingest: instance left as received' "
                                    "|| true").stdout.strip() or 0) - int(log_before.stdout.strip() or 0)
    assert logged == ingest["left_as_received"] - ingest_before.get("left_as_received", 0)
    studies = len(client.get("studies"))

    def classified() -> bool:
        s = client.quarantine()["summary"]
        return s["valid"] + s["incomplete"] + s["quarantined"] >= studies
    wait_for(classified, 180, interval=2, message="every study on the LAMI validated")
    s = client.quarantine()["summary"]
    print(f"\ncorpus via {aet}: {len(corpus)} files, {sent} accepted, {refused} refused, {stored} new instances; "
          f"ingest {ingest}; validation {s}")


_MIS_SEND = """
import sys, hl7.client
host, port = sys.argv[1], int(sys.argv[2])
with hl7.client.MLLPClient(host, port) as c:
    for msg in sys.stdin.read().split("\\n"):
        if msg.strip():
            print(c.send_message(msg.strip("\\n")).decode("utf-8", "replace").replace("\\r", " | "))
"""

def _hl7(node_region, hk, lab, messages: list[str]) -> list[str]:
    """Send ``messages`` from the hospital's MIS (its namespace, python-hl7's MLLP client); their ACKs."""
    import sys
    node = node_region.hospitals[hk].node
    spec = node_region.nodes[node]
    p = subprocess.run(["ip", "netns", "exec", lab.mis[hk].netns, sys.executable, "-c", _MIS_SEND, spec.address,
                        str(node_region.ports(node).hl7)], input="\n".join(messages), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert p.returncode == 0, p.stdout
    return p.stdout.strip().splitlines()


def _worklist(lab, region, aet: str, node: str, tmp: Path):
    """findscu -W from the device's namespace to its node, as the device asks."""
    from kontur.testing.dicom import findscu_worklist
    spec = region.nodes[node]
    return findscu_worklist(tmp / f"wl-{aet}", port=region.ports(node).dicom, called_aet=spec.aet, calling_aet=aet,
                            host=spec.address, netns=lab.modalities[aet].netns)


def test_an_order_from_the_mis_reaches_the_devices_worklist_and_mpps_is_recorded(lab, region, tmp_path):
    """Issue 11 in the lab: the hospital's simulated MIS sends an order; findscu
    from the modality's namespace sees it with the Cyrillic name intact; MPPS
    IN PROGRESS then COMPLETED is recorded; an ADT^A08 changes the name in the
    worklist; a cancel removes the item.  Each from the host the inventory
    names: the firewall admits nothing else."""
    import sys

    from kontur.testing.hl7 import orm
    hk, node = "city", "city-lami"
    aet = next(m.aet for m in region.hospitals[hk].modalities if m.modality == "CT")
    facility = region.hospitals[hk].mis.facility
    assert on_host(lab, node, "systemctl is-active kontur-hl7").stdout.strip() == "active"
    acks = _hl7(region, hk, lab, [orm(cid="LAB-1", accession="LAB-ACC1", facility=facility, pid="L-100")])
    assert "MSA|AA|LAB-1" in acks[0], acks
    p, answers = _worklist(lab, region, aet, node, tmp_path)
    assert [a.AccessionNumber for a in answers] == ["LAB-ACC1"], p.stdout + p.stderr
    assert str(answers[0].PatientName) == "Иванов^Пётр^Ильич"
    # the other modality of the hospital (DX) does not see a CT order
    other = next(m.aet for m in region.hospitals[hk].modalities if m.modality != "CT")
    assert _worklist(lab, region, other, node, tmp_path)[1] == []

    # an earlier study of the same patient, stored on the LAMI from the CT
    from kontur import nodeapi
    from kontur.testing.dicom import make_study
    from kontur.testing.orthanc import wait_for
    earlier = make_study(1, patient_id="L-100", patient_name="Иванов^Пётр^Ильич")
    f = tmp_path / "earlier.dcm"
    f.write_bytes(earlier.instances[0].data)
    spec = region.nodes[node]
    assert _store_scu(lab.modalities[aet].netns, aet, spec.aet, spec.address, region.ports(node).dicom,
                      f).returncode == 0
    client = nodeapi.client_for(load(SMALL), node, lab=True)

    def stored_names():
        found = client.post("tools/find", {"Level": "Study", "Query": {"PatientID": "L-100"}, "Expand": True})
        return sorted(s["PatientMainDicomTags"].get("PatientName", "") for s in found)
    wait_for(lambda: stored_names() == ["Иванов^Пётр^Ильич"], 60, message="the earlier study on the LAMI")

    a08 = "\r".join([f"MSH|^~\\&|MIS|{facility}|KONTUR|LAMI|20261201120500||ADT^A08|LAB-2|P|2.5||||||UNICODE UTF-8",
                     f"PID|1||L-100^^^{facility}||Петров^Пётр^Ильич||19700101|M"]) + "\r"
    assert "MSA|AA|LAB-2" in _hl7(region, hk, lab, [a08])[0]
    assert [str(a.PatientName) for a in _worklist(lab, region, aet, node, tmp_path)[1]] == ["Петров^Пётр^Ильич"]
    # and the stored study (Orthanc's modify by the plugin)
    wait_for(lambda: stored_names() == ["Петров^Пётр^Ильич"], 60, message="the stored study renamed")

    # MPPS from the device's namespace (pynetdicom as the device)
    from kontur.testing import mpps_scu
    ns = ["ip", "netns", "exec", lab.modalities[aet].netns]
    mpps = [aet, spec.aet, spec.address, str(region.ports(node).mpps)]
    status, sop = mpps_scu.run(*mpps, "create", "LAB-ACC1", "IN PROGRESS", prefix=ns)
    assert status == 0x0000
    # the MIS is told, with the study's URL on the LAMI (issue 12)
    told = wait_for(lambda: [m for m in _mis_log(lab, hk) if "LAB-ACC1" in m["message"]
                             and "Исследование начато" in m["message"]], 60, message="the MIS told the study started")
    assert f"https://{spec.address}:{region.ports(node).https}/kontur/view/L-100/LAB-ACC1/" in told[0]["message"]
    assert mpps_scu.run(*mpps, "set", sop, "COMPLETED", prefix=ns)[0] == 0x0000
    logged = on_host(lab, node, "journalctl -u kontur-hl7 -o cat | grep 'MPPS N-SET' | tail -n 1")
    assert "order LAB-ACC1 completed" in logged.stdout, logged.stdout + logged.stderr
    assert _worklist(lab, region, aet, node, tmp_path)[1] == []           # done: off the worklist
    # the study's way so far, as the operator asks for it (issue 12, "status online")
    import json
    r = kontur("study", "status", "LAB-ACC1", "--lab", "-i", str(SMALL), "--json")
    assert r.rc == 0, r.out
    st = json.loads(r.out)
    assert st["node"] == node and st["accession"] == "LAB-ACC1" and st["patient_id"] == "L-100"
    steps = [x["step"] for x in st["steps"]]          # in the order they happened
    assert steps[:3] == ["ordered", "worklist", "started"] and "completed" in steps, st
    assert "started" in next(x["detail"] for x in st["steps"] if x["step"] == "notified"), st
    r = kontur("study", "status", "LAB-NOPE", "--lab", "-i", str(SMALL))
    assert r.rc == 1 and "no node knows a study or order LAB-NOPE" in r.out, r.out

    # a second order, cancelled
    assert "MSA|AA|" in _hl7(region, hk, lab, [orm(cid="LAB-3", accession="LAB-ACC2", facility=facility)])[0]
    assert len(_worklist(lab, region, aet, node, tmp_path)[1]) == 1
    assert "MSA|AA|" in _hl7(region, hk, lab, [orm("CA", cid="LAB-4", accession="LAB-ACC2", facility=facility)])[0]
    assert _worklist(lab, region, aet, node, tmp_path)[1] == []

    # MLLP from anywhere but the MIS is closed (the TsAMI's host tries)
    probe = f"timeout 3 bash -c '</dev/tcp/{spec.address}/{region.ports(node).hl7}' && echo open || echo closed"
    assert on_host(lab, "tsami", probe).stdout.strip() == "closed"


def _mis_log(lab, hk: str) -> list[dict]:
    """What the hospital's simulated MIS received (the lab's recorder), oldest first."""
    import json
    path = Path(lab.mis[hk].log)
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()] \
        if path.exists() else []


def _report_texts(client, study_id: str) -> list[str]:
    """The conclusions of the study's reports (Basic Text SR), as Orthanc reads them."""
    out = []
    for series in client.get(f"studies/{study_id}/series"):
        if series["MainDicomTags"].get("Modality") != "SR":
            continue
        for inst in series["Instances"]:
            tags = client.get(f"instances/{inst}/simplified-tags")
            for c in tags.get("ContentSequence", []):
                if c["ConceptNameCodeSequence"][0]["CodeValue"] == "121076":       # Conclusions
                    out += [i["TextValue"] for i in c["ContentSequence"]]
    return out


def test_a_result_from_the_mis_becomes_the_studys_report_on_the_lami_and_at_the_tsami(lab, region, tmp_path):
    """Issue 12 in the lab: a study from the CT; its result from the hospital's
    MIS (no order for it: AE, kept); the HL7 service stores the report into
    the study on city-lami (C-STORE over loopback, as the node's DICOM
    modality KONTUR_HL7), the conclusion intact; replication carries it to
    the TsAMI as a late instance."""
    from kontur import nodeapi
    from kontur.testing.dicom import make_study
    from kontur.testing.hl7 import oru
    from kontur.testing.orthanc import wait_for
    hk, node = "city", "city-lami"
    aet = next(m.aet for m in region.hospitals[hk].modalities if m.modality == "CT")
    facility = region.hospitals[hk].mis.facility
    spec = region.nodes[node]
    study = make_study(1, patient_id="L-200", patient_name="Сидорова^Анна", accession="LAB-ACC9")
    f = tmp_path / "walkin.dcm"
    f.write_bytes(study.instances[0].data)
    assert _store_scu(lab.modalities[aet].netns, aet, spec.aet, spec.address, region.ports(node).dicom,
                      f).returncode == 0
    small = load(SMALL)
    lami, tsami = nodeapi.client_for(small, node, lab=True), nodeapi.client_for(small, "tsami", lab=True)

    def study_id(client):
        found = client.post("tools/find", {"Level": "Study", "Query": {"AccessionNumber": "LAB-ACC9"}})
        return found[0] if found else None
    sid = wait_for(lambda: study_id(lami), 60, message="the study on the LAMI")
    ack = _hl7(region, hk, lab, [oru(cid="LAB-R1", accession="LAB-ACC9", pid="L-200", facility=facility, flag="A",
                                     conclusion="Образование правого лёгкого.")])[0]
    assert "MSA|AE|LAB-R1" in ack and "attached when a study with that accession number arrives" in ack, ack
    wait_for(lambda: _report_texts(lami, sid) == ["Образование правого лёгкого."], 60,
             message="the report in the study on the LAMI")
    wait_for(lambda: [m for m in _mis_log(lab, hk) if "LAB-ACC9" in m["message"]
                      and "Заключение прикреплено" in m["message"]], 60, message="the MIS told the report is in")
    tsid = wait_for(lambda: study_id(tsami), 180, message="the study at the TsAMI")
    wait_for(lambda: _report_texts(tsami, tsid) == ["Образование правого лёгкого."], 180,
             message="the report at the TsAMI")


def test_a_wheel_missing_on_the_control_machine_fails_the_deploy_naming_host_step_and_wheel(
        lab, inventories, region, tmp_path, monkeypatch):
    """The HL7 service's pinned pynetdicom wheel is not where this control
    machine keeps the nodes' wheels: the deploy fails on the host that needs
    it (the LAMI with the MIS), naming the step and the wheel, before changing
    anything there; the hosts without the service deploy."""
    from kontur.packages import NODE_WHEELS
    monkeypatch.setenv("KONTUR_WHEEL_DIR", str(tmp_path / "no-wheels"))
    before = unit_stamp(lab, "city-lami", ("orthanc.service", "kontur-hl7.service"))
    r = deploy(inventories["work"])
    assert r.rc == 1 and r.failed == 1, r.out
    assert "city-lami: FAILED at render" in r.out, r.out
    cause = "\n".join(r.lines("city-lami"))
    wheel = f"pynetdicom-{NODE_WHEELS['pynetdicom']}-py3-none-any.whl"
    assert "step 'HL7 service: configure'" in cause and wheel in cause and "./run setup" in r.out, r.out
    assert "Traceback" not in r.out
    for other in ("tsami", "research"):
        assert any(ln.startswith(f"{other}: done") for ln in r.lines(other)), r.out
    assert unit_stamp(lab, "city-lami", ("orthanc.service", "kontur-hl7.service")) == before


def _curl(*args: str) -> tuple[str, str]:
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    return p.stdout.strip(), p.stderr


@pytest.fixture(scope="module")
def foreign_cert(tmp_path_factory):
    """A client certificate from another CA: must be refused like none."""
    other = SecretStore(tmp_path_factory.mktemp("other") / "secrets")
    ensure_ca(other, "not the region")
    return operator_cert(other, "not the region")


def test_inter_site_endpoints_require_a_regional_client_certificate(lab, region, store, foreign_cert):
    ca, crt, key = operator_cert(store, region.region.title)
    _fca, fcrt, fkey = foreign_cert
    for node, spec in region.nodes.items():
        base = f"https://{spec.address}:{region.ports(node).https}"
        plain, _ = _curl(f"http://{spec.address}:{region.ports(node).https}/system")
        assert plain == "400", f"{node}: plain HTTP on the TLS port answered {plain}"
        none, _ = _curl("--cacert", str(ca), f"{base}/system")
        assert none == "400", f"{node}: TLS without a client certificate answered {none}"
        foreign, _ = _curl("--cacert", str(ca), "--cert", str(fcrt), "--key", str(fkey), f"{base}/system")
        assert foreign in ("400", "000"), f"{node}: a foreign client certificate answered {foreign}"
        mtls = ("--cacert", str(ca), "--cert", str(crt), "--key", str(key))
        if spec.role.value == "reference":
            continue
        assert _curl(*mtls, f"{base}/system")[0] == "401", f"{node}: REST without credentials"
        assert _curl(*mtls, "-u", "orthanc:orthanc", f"{base}/system")[0] == "401", f"{node}: orthanc:orthanc"
        good = store.password(f"nodes/{node}/{SERVICE_USER}")
        code, err = _curl(*mtls, "-u", f"{SERVICE_USER}:{good}", f"{base}/system")
        assert code == "200", f"{node}: with the regional certificate and credentials: {code} {err}"


def test_undeclared_ports_are_closed_from_another_host(lab, region):
    target = region.nodes["city-lami"]
    ports = region.ports("city-lami")
    probe = "timeout 3 bash -c '</dev/tcp/{}/{}' && echo open || echo closed"
    # a declared port, from a declared peer: open (the probe works)
    p = on_host(lab, "tsami", probe.format(target.address, ports.https))
    assert p.stdout.strip() == "open", p.stdout + p.stderr
    # Orthanc's HTTP port (loopback behind nginx), PostgreSQL, DICOM (modalities only), HL7 (the MIS
    # only), MPPS (modalities only), port 80
    for port in (ports.http, ports.postgresql, ports.dicom, ports.hl7, ports.mpps, 80):
        p = on_host(lab, "tsami", probe.format(target.address, port))
        assert p.stdout.strip() == "closed", f"city-lami:{port} is reachable from tsami"


def test_a_doctor_reads_in_a_browser_with_the_issued_certificate_and_password(lab, inventories, region, store,
                                                                             tmp_path):
    """R6: ops issue ivanova's credentials; from a workstation in her hospital's
    network (a namespace of the city hospital) her browser's certificate and
    password open her LAMI with her role's rights and the TsAMI's viewer link, and nothing less does."""
    r = kontur("users", "issue", "ivanova", "--lab", "-i", str(inventories["work"]), "--out", str(tmp_path))
    assert r.rc == 0, r.out
    sheet = {k: v.strip() for k, _, v in (ln.partition(":") for ln in (tmp_path / "ivanova.txt").read_text()
                                          .splitlines()) if k in ("password", "certificate")}
    password, passphrase = sheet["password"], sheet["certificate"].split("passphrase: ")[1].rstrip(")")
    workstation = next(m.netns for m in lab.modalities.values() if m.hospital == "city")
    ca = store.pki_dir / "ca.crt"
    cert = ("--cacert", str(ca), "--cert-type", "P12", "--cert", f"{tmp_path / 'ivanova.p12'}:{passphrase}")

    def browser(*args: str) -> str:
        p = in_netns(workstation, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "15", *args])
        return p.stdout.strip()

    for node in ("city-lami", "tsami"):
        base = f"https://{region.nodes[node].address}:{region.ports(node).https}"
        # her LAMI: all of it that a radiologist may; the TsAMI: the viewer link only, her hospital's
        # studies and those shared with it (issue 12), not Orthanc Explorer or the region's patients
        own = "200" if node == "city-lami" else "403"
        assert browser(*cert, "-u", f"ivanova:{password}", f"{base}/app/explorer.html") == own, node
        assert browser(*cert, "-u", f"ivanova:{password}", f"{base}/patients") == own, node
        # a radiologist views and downloads; deleting is not among her rights
        assert browser(*cert, "-u", f"ivanova:{password}", "-X", "DELETE", f"{base}/patients/x") == "403", node
        assert browser(*cert, "-u", "ivanova:wrong", f"{base}/patients") == "401", node
        assert browser("--cacert", str(ca), "-u", f"ivanova:{password}", f"{base}/patients") == "400", node
    link = f"https://{region.nodes['tsami'].address}:{region.ports('tsami').https}/kontur/view/1/-/1.2.3"
    assert browser(*cert, "-u", f"ivanova:{password}", link) == "404"          # the link is hers: no such study


# --- a change to one hospital ---------------------------------------------------------

def test_modality_change_restarts_only_that_hospital(lab, inventories, region, store, tmp_path):
    work = inventories["work"]
    changed = tmp_path / "region.yaml"
    shutil.copy(work, changed)
    removed = region.hospitals["city"].modalities[-1].aet
    r = kontur("inventory", "remove-modality", removed, "-i", str(changed))
    assert r.rc == 0, r.out
    nodes = list(load(changed).nodes)
    before = {n: unit_stamp(lab, n) for n in nodes}

    dry = deploy(changed, "--dry-run")
    assert dry.rc == 0, dry.out
    assert "operations to change" in dry.out
    assert any("would change: Orthanc: /etc/orthanc/dicom.json" in ln for ln in dry.lines("city-lami")), dry.out
    assert any(ln.startswith("city-lami:   -") and removed in ln for ln in dry.lines("city-lami")), dry.out
    for n in nodes:
        if n != "city-lami":
            assert not any(": would change:" in ln for ln in dry.lines(n)), dry.out
    for key in store.keys():
        assert store.get(key) not in dry.out, f"the dry run printed the secret {key}"
    assert {n: unit_stamp(lab, n) for n in nodes} == before, "the dry run changed something"

    r = deploy(changed)
    assert r.rc == 0, r.out
    after = {n: unit_stamp(lab, n) for n in nodes}
    assert after["city-lami"]["orthanc.service"] != before["city-lami"]["orthanc.service"]
    for n in nodes:
        if n != "city-lami":
            assert after[n] == before[n], f"{n} restarted"
            assert [ln for ln in r.lines(n) if not ln.startswith(f"{n}: done")] == [], r.out
    # the removed modality is refused now; put it back
    spec = region.nodes["city-lami"]
    assert _echo(lab.modalities[removed].netns, removed, spec.aet, spec.address,
                 region.ports("city-lami").dicom).returncode != 0
    r = deploy(work)
    assert r.rc == 0 and r.changed > 0, r.out
    assert _echo(lab.modalities[removed].netns, removed, spec.aet, spec.address,
                 region.ports("city-lami").dicom).returncode == 0


# --- broken hosts ------------------------------------------------------------------------

BLOCKER = "kontur-test-blocker"


def _block(lab, node: str, units_to_stop: str, bind: str, port: int) -> None:
    """Stop ``units_to_stop`` and take ``port`` with another process."""
    p = on_host(lab, node, f"systemctl stop {units_to_stop}; systemctl reset-failed {BLOCKER} 2>/dev/null; "
                           f"systemd-run -q --unit {BLOCKER} -p Restart=on-failure -p RestartSec=0.2 "
                           f"python3 -m http.server --bind {bind} {port}; "
                           f"for i in $(seq 40); do ss -Hltnp 'sport = :{port}' | grep -q python3 && exit 0; "
                           "sleep 0.25; done; exit 1")
    assert p.returncode == 0, f"could not take port {port} on {node}: {p.stdout}{p.stderr}"


def _unblock(lab, node: str) -> None:
    on_host(lab, node, f"systemctl stop {BLOCKER}; systemctl reset-failed {BLOCKER} 2>/dev/null; true")


def test_port_taken_fails_naming_host_step_and_cause(lab, inventories, region):
    port = region.ports("city-lami").dicom
    try:
        _block(lab, "city-lami", "orthanc.service", "0.0.0.0", port)
        # one host at a time (--serial 1): the deploy stops after the failed host's batch
        r = deploy(inventories["work"], "--serial", "1")
        assert r.rc == 1, r.out
        assert r.failed == 1, r.out
        assert "city-lami: FAILED at Orthanc: orthanc.service enabled and running" in r.out, r.out
        assert "already in use" in r.out and f"port = {port}" in r.out, r.out
        assert "deploy failed on 1 host(s): city-lami" in r.out
        batches = re.findall(r"^batch (\d+) of (\d+): (\S+)$", r.out, re.M)
        started = [b[2] for b in batches]
        assert started[-1] == "city-lami" and len(started) < int(batches[0][1]), r.out
        not_started = re.search(r"not started: ([\w, -]+)$", r.out, re.M).group(1).split(", ")
        assert len(started) + len(not_started) == r.hosts == int(batches[0][1]), r.out
        assert f", not started: {len(not_started)}" in r.out
        for n in started[:-1]:
            assert any(ln.startswith(f"{n}: done") for ln in r.lines(n)), r.out
        for n in not_started:
            assert not r.lines(n), r.out                # never touched
    finally:
        _unblock(lab, "city-lami")
    r = deploy(inventories["work"])
    assert r.rc == 0 and r.failed == 0, r.out
    assert on_host(lab, "city-lami", "systemctl is-active orthanc").returncode == 0


def test_postgresql_down_fails_naming_host_step_and_cause(lab, inventories, region, store):
    port = region.ports("tsami").postgresql
    try:
        _block(lab, "tsami", "postgresql.service postgresql@15-main.service", "127.0.0.1", port)
        r = deploy(inventories["work"])
        assert r.rc == 1, r.out
        assert "tsami: FAILED at PostgreSQL: postgresql@15-main.service running" in r.out, r.out
        assert "could not" in r.out and "TCP/IP" in r.out, r.out
        assert "deploy failed on 1 host(s): tsami" in r.out
    finally:
        _unblock(lab, "tsami")
    r = deploy(inventories["work"])
    assert r.rc == 0 and r.failed == 0, r.out
    # the index server came back under a running Orthanc: Orthanc restarted with it
    assert "tsami: Orthanc: check the configuration and restart orthanc.service" in r.out, r.out
    p = on_host(lab, "tsami", f"runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p {port} && "
                              "systemctl is-active orthanc")
    assert p.returncode == 0, p.stdout + p.stderr
    ca, crt, key = operator_cert(store, region.region.title)
    spec = region.nodes["tsami"]
    code, err = _curl("--cacert", str(ca), "--cert", str(crt), "--key", str(key),
                      "-u", f"{SERVICE_USER}:{store.password('nodes/tsami/' + SERVICE_USER)}",
                      f"https://{spec.address}:{region.ports('tsami').https}/statistics")
    assert code == "200", f"Orthanc's index does not answer after the fix: {code} {err}"


def test_package_missing_from_the_mirror_fails_naming_host_step_and_cause(lab, inventories):
    """The research node lost dcmtk and the mirror no longer carries it: the
    deploy fails there, naming the package; the others deploy; once the mirror
    offers it again, a re-run installs it."""
    node = "research"
    try:
        r = kontur("lab", "mirror", "--withhold", "dcmtk")
        assert r.rc == 0 and "withholds: dcmtk" in r.out, r.out
        p = on_host(lab, node, "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q dcmtk >/dev/null && "
                               "! dpkg-query -W -f='${Status}' dcmtk 2>/dev/null | grep -q 'ok installed'")
        assert p.returncode == 0, p.stdout + p.stderr
        r = deploy(inventories["work"])
        assert r.rc == 1, r.out
        assert (r.failed, r.hosts) == (1, 4), r.out
        assert f"{node}: FAILED at Base: install packages" in r.out, r.out
        cause = "\n".join(r.lines(node))
        assert "Unable to locate package dcmtk" in cause or "'dcmtk' has no installation candidate" in cause, cause
        assert "does not offer dcmtk" in cause, cause
        assert f"deploy failed on 1 host(s): {node}" in r.out
        for other in ("tsami", "city-lami", NEW_NODE):
            assert any(ln.startswith(f"{other}: done") for ln in r.lines(other)), r.out
    finally:
        r = kontur("lab", "mirror", "--full")
        assert r.rc == 0 and "offers every package" in r.out, r.out
    r = deploy(inventories["work"])
    assert r.rc == 0 and r.failed == 0, r.out
    assert f"{node}: Base: install packages" in r.out, r.out
    p = on_host(lab, node, "dpkg-query -W -f='${Status}' dcmtk && command -v storescu")
    assert p.returncode == 0 and "ok installed" in p.stdout, p.stdout + p.stderr


# --- rotation (issue 14): a password, then the CA in three phases -----------------------------

def _tsami_status(store_dir: Path, region, password: str, path: str = "system") -> str:
    ca, crt, key = operator_cert(SecretStore(store_dir), region.region.title)
    spec = region.nodes["tsami"]
    return _curl("--cacert", str(ca), "--cert", str(crt), "--key", str(key), "-u", f"{SERVICE_USER}:{password}",
                 f"https://{spec.address}:{region.ports('tsami').https}/{path}")[0]


def test_a_rotated_password_is_pushed_by_the_next_deploy_and_the_old_one_refused(lab, inventories, region, store):
    """`kontur secrets rotate password`: the TsAMI's service account and its PostgreSQL role; the deploy
    pushes both (Orthanc's credentials, the role's SCRAM verifier); the old password is refused, the
    new one answers, Orthanc's index (PostgreSQL, with the new password) answers."""
    work = inventories["work"]
    key, db = f"nodes/tsami/{SERVICE_USER}", "nodes/tsami/postgresql"
    old = SecretStore(store.dir).get(key)
    for k in (key, db):
        r = kontur("secrets", "rotate", "password", "--lab", "-i", str(work), k, "--reason", "lab rehearsal")
        assert r.rc == 0, r.out
    new = SecretStore(store.dir).get(key)
    assert new != old
    r = deploy(work)
    assert r.rc == 0 and r.failed == 0, r.out
    assert new not in r.out and old not in r.out
    assert _tsami_status(store.dir, region, old) == "401"
    assert _tsami_status(store.dir, region, new, "statistics") == "200"
    r = kontur("secrets", "log", "--lab", "-i", str(work))
    assert r.rc == 0 and f"password {key}: lab rehearsal" in r.out and new not in r.out, r.out


def _through_to_the_tsami(lab, region, tmp_path: Path, label: str) -> None:
    """A study from a device of each hospital (city's LAMI, the rural gateway) reaches the TsAMI."""
    from kontur import nodeapi
    from kontur.testing.dicom import make_study
    from kontur.testing.orthanc import wait_for
    tsami = nodeapi.client_for(load(SMALL), "tsami", lab=True)
    sent = []
    for hk in ("city", NEW_HOSPITAL):
        node = region.hospitals[hk].node
        device = region.hospitals[hk].modalities[0]
        aet = device.aet
        spec = region.nodes[node]
        accession = f"ROT-{label}-{hk}"[:16]
        f = tmp_path / f"{accession}.dcm"
        f.write_bytes(make_study(1, accession=accession, modality=device.modality).instances[0].data)
        p = _store_scu(lab.modalities[aet].netns, aet, spec.aet, spec.address, region.ports(node).dicom, f)
        assert p.returncode == 0, f"C-STORE {aet} -> {spec.aet}: {p.stdout}"
        sent.append(accession)

    def arrived():
        return all(tsami.post("tools/find", {"Level": "Study", "Query": {"AccessionNumber": a}}) for a in sent)
    wait_for(arrived, 180, interval=1, message=f"the studies of {label} at the TsAMI")


def test_the_ca_changes_over_in_three_phases_with_every_link_up(lab, inventories, region, store, tmp_path):
    """`kontur secrets rotate ca`, `--continue`, `--finish`, a deploy after each: after every phase a study
    from each hospital reaches the TsAMI and `kontur check` finds every node well; a phase asked for before
    the nodes are deployed is refused naming them; deploy's custody check takes the old CA's record as this
    store's predecessor."""
    work = inventories["work"]
    nodes = set(load(work).nodes)               # the nodes the rotation sees (the hospital may be back)

    def rotate(*args):
        return kontur("secrets", "rotate", "ca", "--lab", "-i", str(work), *args, "--reason", "lab rehearsal")

    def deployed_and_up(label):
        r = deploy(work)
        assert r.rc == 0 and r.failed == 0, r.out
        _through_to_the_tsami(lab, region, tmp_path, label)
        r = kontur("check", "--lab", "-i", str(work))
        assert r.rc == 0, r.out

    r = rotate()
    assert r.rc == 0 and "phase 1 of 3" in r.out, r.out
    r = rotate("--continue")                    # no node trusts the new CA yet
    assert r.rc == 2 and f"refused: {len(nodes)} node(s) not ready" in r.out, r.out
    assert {ln.split(":")[0].strip() for ln in r.out.splitlines() if "refused the client certificate" in ln} == nodes
    deployed_and_up("p1")

    r = rotate("--finish")
    assert r.rc == 2 and "--finish comes after --continue" in r.out, r.out
    r = rotate("--continue")
    assert r.rc == 0 and "phase 2 of 3" in r.out, r.out
    r = rotate("--finish")                      # every node still presents the old CA's certificate
    assert r.rc == 2 and "presents a certificate of the old CA" in r.out, r.out
    deployed_and_up("p2")                       # custody: the old CA's record accepted as the predecessor

    r = rotate("--finish")
    assert r.rc == 0 and "phase 3 of 3" in r.out, r.out
    deployed_and_up("p3")
    p = on_host(lab, "tsami", "grep -c 'BEGIN CERTIFICATE' /etc/kontur/tls/ca.crt")
    assert p.stdout.strip() == "1", p.stdout + p.stderr
