"""Controls on every node: services, configuration drift, the security baseline.

IDs are stable; references point at the reglament (seed 004) and the Orthanc
Book; impact 1.0 means an auditor must see it fixed before sign-off.
"""
from __future__ import annotations

import hashlib
import json

import pytest

from remote import as_service

control = pytest.mark.control
ARCHIVES = ("tsami", "lami", "gateway", "research")


@control("KONTUR-SVC-01", ref="R15; reglament 004 §5.5", impact=1.0)
def test_services_are_enabled_and_running(host, bundle):
    for unit in bundle.services:
        svc = host.service(unit.removesuffix(".service"))
        assert svc.is_running, f"{unit} is not running"
        assert svc.is_enabled, f"{unit} is not enabled"


@control("KONTUR-CFG-01", ref="kontur: the host carries exactly what the inventory renders", impact=0.7)
def test_files_match_the_inventory(host, bundle):
    """One round trip for every file: its mode, owner and SHA-256 against the rendered bundle."""
    paths = " ".join(f"'{f.path}'" for f in bundle.files)
    out = host.run(f"for p in {paths}; do if [ -e \"$p\" ]; then "
                   f"printf '%s|%s|' \"$p\" \"$(stat -c '%a|%U|%G' \"$p\")\"; sha256sum < \"$p\" | cut -d' ' -f1; "
                   "else echo \"$p|missing\"; fi; done").stdout
    seen = {}
    for line in out.splitlines():
        parts = line.split("|")
        seen[parts[0]] = parts[1:]
    drift = []
    for f in bundle.files:
        got = seen.get(f.path)
        if not got or got == ["missing"]:
            drift.append(f"{f.path}: missing")
            continue
        mode, user, group, digest = got
        if digest != hashlib.sha256(f.content).hexdigest():
            drift.append(f"{f.path}: content differs from the rendered file")
        if f"{int(mode, 8):04o}" != f.mode:
            drift.append(f"{f.path}: mode {int(mode, 8):04o}, expected {f.mode}")
        if (user, group) != (f.owner, f.group):
            drift.append(f"{f.path}: owner {user}:{group}, expected {f.owner}:{f.group}")
    assert not drift, "configuration drift:\n" + "\n".join(drift)


@control("KONTUR-SEC-01", ref="Orthanc Book faq/security: passwords in plain text", impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_credentials_file_is_0600(host):
    f = host.file("/etc/orthanc/credentials.json")
    assert f.exists and f.mode == 0o600 and f.user == "orthanc"


@control("KONTUR-SEC-02", ref="Orthanc Book faq/security; Debian ships postgresql.json world-readable", impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_no_other_configuration_in_etc_orthanc(host, bundle):
    expected = {f.path for f in bundle.files if f.path.startswith("/etc/orthanc/") and f.path.endswith(".json")}
    present = set(host.check_output("find /etc/orthanc -maxdepth 1 -name '*.json'").split())
    assert present == expected


@control("KONTUR-SEC-03", ref="Orthanc Book faq/security: default credentials", impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_rest_refuses_default_and_missing_credentials(host, target, node):
    port = target.region.ports(node).http
    for auth in ("", "-u orthanc:orthanc"):
        code = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' {auth} http://127.0.0.1:{port}/system")
        assert code == "401", f"REST answered {code} with {auth or 'no credentials'}"


@control("KONTUR-SEC-04", ref="Orthanc Book faq/security: IsHttpServerSecure", impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_orthanc_reports_a_secure_http_server(host, target, node):
    status, text = as_service(host, target.region.ports(node).http, "/system")
    assert status == 200, f"REST /system as the service account answered {status}"
    system = json.loads(text)
    assert system.get("IsHttpServerSecure", True) is True
    assert system["DicomAet"] == target.region.nodes[node].aet


@control("KONTUR-NET-01", ref="kontur: exactly the declared ports", impact=1.0)
def test_firewall_policy_is_drop(host):
    rules = host.check_output("nft list chain inet kontur input")
    assert "policy drop" in rules


@control("KONTUR-NET-02", ref="issue 4: TCP_NODELAY for DCMTK inside Orthanc", impact=0.5)
@pytest.mark.roles(*ARCHIVES)
def test_orthanc_runs_with_tcp_nodelay(host):
    pid = host.check_output("systemctl show -p MainPID --value orthanc")
    env = host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    assert "TCP_NODELAY=1" in env.splitlines()


@control("KONTUR-DSK-01", ref="R15: disk thresholds from the inventory", impact=0.7)
@pytest.mark.roles(*ARCHIVES)
def test_storage_below_warning_threshold(host, target, node):
    spec = target.region.nodes[node]
    used = host.check_output(f"df --output=pcent {spec.storage_dir} | tail -1").strip().rstrip("%")
    assert int(used) < target.region.disk(node).warning_percent, f"{spec.storage_dir} is {used}% full"


@control("KONTUR-TLS-01", ref="issue 4: mutual TLS between sites", impact=1.0)
@pytest.mark.roles(*ARCHIVES)  # a reference front takes browsers without certificates, by design
def test_https_refuses_clients_without_a_certificate(host, target, node):
    port = target.region.ports(node).https
    code = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert /etc/kontur/tls/ca.crt "
                    f"https://{node}:{port}/system --resolve {node}:{port}:127.0.0.1").stdout
    assert code == "400", f"HTTPS without a client certificate answered {code}"


@control("KONTUR-SEC-05", ref="Orthanc Book faq/security: ExecuteLuaEnabled, RestApiWriteToFileSystemEnabled",
         impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_remote_lua_and_filesystem_writes_are_off(host, target, node):
    """Remote Lua is refused when tried (a harmless script), and no configuration file on the node turns
    REST writes to the filesystem, remote access or remote Lua on."""
    status, _ = as_service(host, target.region.ports(node).http, "/tools/execute-script", "POST",
                           b"print('kontur audit')")
    assert status in (403, 404), f"POST /tools/execute-script answered {status}: remote Lua is on"
    found = json.loads(host.check_output(
        "python3 -c \"import glob, json; print(json.dumps({k: v for f in glob.glob('/etc/orthanc/*.json') "
        "for k, v in json.load(open(f)).items() if k in ('ExecuteLuaEnabled', 'RestApiWriteToFileSystemEnabled', "
        "'RemoteAccessAllowed')}))\""))
    on = sorted(k for k, v in found.items() if v is not False)
    assert not on, f"turned on (or not turned off) in /etc/orthanc: {', '.join(on)}"


def _echo(host, calling: str, called: str, port: int):
    return host.run(f"TCP_NODELAY=1 echoscu -ta 5 -td 5 -to 5 -aet {calling} -aec {called} 127.0.0.1 {port}")


@control("KONTUR-DCM-01", ref="DICOM PS3.8 §7.1.1 (A-ASSOCIATE-RJ); Orthanc Book: DicomAlwaysAllowEcho",
         impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_an_unknown_calling_ae_is_refused(host, target, node):
    """C-ECHO from an AE title the inventory does not declare is rejected (tried on the node's loopback)."""
    run = _echo(host, "KONTUR_AUDIT", target.region.nodes[node].aet, target.region.ports(node).dicom)
    assert run.rc != 0 and "Association Rejected" in run.stdout + run.stderr, \
        f"an undeclared AE got: {(run.stdout + run.stderr).strip()[-300:]}"


@control("KONTUR-DCM-02", ref="DICOM PS3.8 §7.1.1; Orthanc Book: DicomCheckCalledAet", impact=0.7)
@pytest.mark.roles("lami", "gateway")
def test_a_wrong_called_ae_is_refused(host, bundle, target, node):
    """As a peer the node declares on loopback (its HL7 service): C-ECHO to the right called AE
    succeeds, to a wrong one it is rejected."""
    dicom = json.loads(bundle.file("/etc/orthanc/dicom.json").content)
    peer = next((m["AET"] for m in dicom["DicomModalities"].values() if m.get("Host") == "127.0.0.1"), None)
    if peer is None:
        pytest.skip("no peer declared on the node's loopback (no HL7 service here)")
    port = target.region.ports(node).dicom
    right = _echo(host, peer, target.region.nodes[node].aet, port)
    assert right.rc == 0, f"the declared peer {peer} was refused: {right.stdout.strip()[-200:]}"
    wrong = _echo(host, peer, "KONTUR_WRONG", port)
    assert wrong.rc != 0 and "Association Rejected" in wrong.stdout + wrong.stderr, \
        f"a wrong called AE got: {(wrong.stdout + wrong.stderr).strip()[-300:]}"


def _store_from_the_hospital(target, node: str, calling: str | None, called: str | None):
    """C-STORE of a fresh test instance from the network of one of the node's hospital's devices
    (its lab namespace), as ``calling`` to ``called`` (the device's and the node's AE titles where
    None); then whether the node holds it (removed again if it does).  (answer, stored)."""
    import tempfile
    from pathlib import Path

    from pydicom.uid import generate_uid

    from kontur.testing.dicom import make_instance
    region = target.region
    device = next((m for h in region.hospitals.values() if h.node == node for m in h.modalities
                   if target.where.device_netns(m.aet)), None)
    if device is None:
        pytest.skip(f"no device of {node}'s hospitals has a namespace in the lab")
    inst = make_instance(patient_id="KONTUR-AUDIT", patient_name="AUDIT^PROBE", study_uid=generate_uid(),
                         series_uid=generate_uid(), series_number=1, instance_number=1)
    with tempfile.TemporaryDirectory(prefix="kontur-audit-") as d:
        f = Path(d) / "probe.dcm"
        f.write_bytes(inst.data)
        run = target.auditor().run(
            f"ip netns exec {target.where.device_netns(device.aet)} env TCP_NODELAY=1 storescu -ta 5 -td 5 "
            f"-to 5 -aet {calling or device.aet} -aec {called or region.nodes[node].aet} "
            f"{region.nodes[node].address} {region.ports(node).dicom} {f}")
    host = target.host(node)
    status, text = as_service(host, region.ports(node).http, "/tools/lookup", "POST", inst.sop_uid.encode())
    assert status == 200, f"POST /tools/lookup answered {status}"
    found = [r for r in json.loads(text) if r.get("Type") == "Instance"]
    for r in found:                        # the probe leaves nothing behind
        as_service(host, region.ports(node).http, f"/instances/{r['ID']}", "DELETE")
    return run, bool(found)


@control("KONTUR-DCM-03", ref="DICOM PS3.8 §7.1.1; Orthanc Book: DicomAlwaysAllowStore, DicomCheckModalityHost",
         impact=1.0)
@pytest.mark.roles("lami", "gateway")
@pytest.mark.writes
def test_a_store_from_an_unknown_ae_is_refused(target, node):
    """C-STORE from a hospital device's own network under an AE title the inventory does not declare:
    refused, and nothing stored (lab only: it would store a test instance where the node lets it)."""
    run, stored = _store_from_the_hospital(target, node, "KONTUR_AUDIT", None)
    assert not stored and run.rc != 0, \
        f"an undeclared AE stored an instance: {(run.stdout + run.stderr).strip()[-300:]}"


@control("KONTUR-DCM-04", ref="DICOM PS3.8 §7.1.1; Orthanc Book: DicomCheckCalledAet", impact=0.7)
@pytest.mark.roles("lami", "gateway")
@pytest.mark.writes
def test_a_store_to_a_wrong_called_ae_is_refused(target, node):
    """C-STORE from a declared device at its own address, to an AE title that is not the node's: refused."""
    run, stored = _store_from_the_hospital(target, node, None, "KONTUR_WRONG")
    assert not stored and run.rc != 0, \
        f"a wrong called AE stored an instance: {(run.stdout + run.stderr).strip()[-300:]}"


_LISTENING = """python3 - <<'KONTUR'
import json
ports = set()
for f, size in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
    try:
        rows = open(f).read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        local, state = row.split()[1], row.split()[3]
        addr, port = local.split(":")
        loopback = addr in ("0100007F", "00000000000000000000000001000000") or addr.endswith("7F")
        if state == "0A" and not loopback:
            ports.add(int(port, 16))
print(json.dumps(sorted(ports)))
KONTUR"""


@control("KONTUR-NET-03", ref="R15; reglament 004 §5.5: exactly the declared ports", impact=1.0)
def test_listening_ports_are_exactly_those_declared(host, bundle):
    """What listens beyond loopback is what the inventory declares for the node, and nothing else."""
    listening = set(json.loads(host.check_output(_LISTENING)))
    declared = {port: svc for svc, port in bundle.facts["listening"].items()}
    stray = sorted(listening - set(declared))
    assert not stray, f"listening beyond loopback but not declared in the inventory: ports {stray}"


@control("KONTUR-TLS-02", ref="issue 4: mutual TLS between sites; certificates renewed before expiry", impact=1.0)
def test_certificates_are_valid_for_more_than_30_days(host, bundle):
    """Every certificate kontur put on the node is valid for at least 30 more days (openssl -checkend)."""
    expiring = []
    for f in bundle.files:
        if f.path.endswith(".crt"):
            run = host.run(f"openssl x509 -noout -checkend {30 * 86400} -enddate -in {f.path}")
            if run.rc != 0:
                expiring.append(f"{f.path}: {run.stdout.strip() or run.stderr.strip()}")
    assert not expiring, "certificates expiring within 30 days:\n" + "\n".join(expiring)


@control("KONTUR-SEC-06", ref="Orthanc Book faq/security; R6: keys and passwords readable by their service only",
         impact=1.0)
def test_key_and_secret_files_are_not_readable_by_others(host, bundle):
    loose = []
    for f in bundle.files:
        if getattr(f, "secret", False):
            st = host.file(f.path)
            if not st.exists:
                loose.append(f"{f.path}: missing")
            elif st.mode & 0o007 or (st.user, st.group) != (f.owner, f.group):
                loose.append(f"{f.path}: mode {st.mode:04o} {st.user}:{st.group}, expected {f.mode} {f.owner}:{f.group}")
    assert not loose, "\n".join(loose)


def _installed(host, packages) -> dict[str, str]:
    run = host.run("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' " + " ".join(packages))
    found = {}
    for line in run.stdout.splitlines():
        name, version, status = (line.split(" ", 2) + ["", ""])[:3]
        if status.startswith("ii"):
            found[name] = version
    return found


@control("KONTUR-CFG-02", ref="kontur: the node's packages are the ones its role needs (Debian 12)", impact=0.7)
def test_the_roles_packages_are_installed(host, bundle):
    found = _installed(host, bundle.packages)
    missing = sorted(set(bundle.packages) - set(found))
    assert not missing, f"not installed: {', '.join(missing)}"


@control("KONTUR-CFG-03", ref="kontur: one region, one version of each package (from the region's mirror)",
         impact=0.5)
def test_every_node_runs_the_same_package_versions(target):
    """A package upgraded (or held back) by hand on one node is drift: its version differs from the
    other nodes' of the region."""
    versions: dict[str, dict[str, str]] = {}
    for node in target.nodes:
        for name, version in _installed(target.host(node), target.bundle(node).packages).items():
            versions.setdefault(name, {})[node] = version
    odd = []
    for name, by_node in sorted(versions.items()):
        if len(set(by_node.values())) > 1:
            odd.append(f"{name}: " + ", ".join(f"{n} {v}" for n, v in sorted(by_node.items())))
    assert not odd, "package versions differ between nodes:\n" + "\n".join(odd)


@control("KONTUR-NET-04", ref="Orthanc Book faq/security: RemoteAccessAllowed; TLS is nginx's job", impact=1.0)
@pytest.mark.roles(*ARCHIVES)
def test_orthancs_plain_http_port_is_unreachable_from_outside(target, node):
    """Probed from the auditor's machine (the lab's control machine): a TCP connection to Orthanc's plain
    HTTP port is refused or dropped; only nginx's HTTPS answers from outside."""
    import socket
    spec = target.region.nodes[node]
    port = target.region.ports(node).http
    try:
        with socket.create_connection((spec.address, port), timeout=1.5):
            connected = True
    except OSError:
        connected = False
    assert not connected, f"{spec.address}:{port} (Orthanc's plain HTTP) accepts connections from outside"
