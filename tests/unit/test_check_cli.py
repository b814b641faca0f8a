"""``kontur check`` and ``kontur audit`` as their users meet them (issue 13):
a bad inventory gets validate's message, not a traceback; a dead node and a
node that never answers are red with whom to call, each costing its timeout;
``--json`` and ``--prometheus``; an audit's controls are reported by their
IDs with impact and reference, as HTML (looked at in Chromium), JUnit valid
against the schema CI tools read, and JSON, and carry no secret."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import xmlschema

from kontur.secrets import SecretStore
from kontur.testing.browser import Chromium, keep_artefact

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"


def kontur(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, "COLUMNS": "250", **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_listener():
    """rural-gw's SSH port: it accepts connections and never says a word (a hung host)."""
    s = socket.socket()
    s.bind(("127.43.2.10", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


ADDRESSES = {"tsami": "127.43.0.10", "research": "127.43.0.20", "city-lami": "127.43.1.10",
             "rural-gw": "127.43.2.10"}


def loopback_region(tmp_path, ports: dict[str, int]) -> Path:
    """The small region on loopback (10.43/16 -> 127.43/16, where nothing listens), each
    node's SSH at the given port."""
    text = SMALL.read_text(encoding="utf-8").replace("10.43.", "127.43.")
    for node, port in ports.items():
        text = text.replace(f"address: {ADDRESSES[node]}", f"address: {ADDRESSES[node]}\n    ports: {{ssh: {port}}}", 1)
    path = tmp_path / "region.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_bad_inventory_gets_validates_message_and_exit_2(tmp_path):
    bad = tmp_path / "region.yaml"
    bad.write_text(SMALL.read_text(encoding="utf-8").replace("role: lami", "role: lamy", 1), encoding="utf-8")
    for command in ("check", "audit"):
        r = kontur(command, "-i", str(bad))
        assert r.returncode == 2, r.stdout + r.stderr
        assert "line " in r.stderr and "lamy" in r.stderr and "Traceback" not in r.stdout + r.stderr, r.stderr
        r = kontur(command, "-i", str(SMALL), "--node", "nowhere")
        assert r.returncode == 2 and "--node nowhere: not in the inventory" in r.stderr, r.stderr


def test_a_dead_node_and_a_hung_node_are_red_with_whom_to_call(tmp_path, silent_listener):
    region = loopback_region(tmp_path, {"city-lami": free_port(), "rural-gw": silent_listener})
    secrets = tmp_path / "secrets"
    subprocess.run([sys.executable, "-m", "kontur", "render", "-i", str(region), "--out", str(tmp_path / "out"),
                    "--secrets", str(secrets)], check=True, capture_output=True, cwd=REPO)
    prom = tmp_path / "textfile" / "kontur.prom"
    r = kontur("check", "-i", str(region), "--secrets", str(secrets), "--node", "city-lami", "--node", "rural-gw",
               "--timeout", "3", "--prometheus", str(prom),
               env={"KONTUR_KNOWN_HOSTS": str(tmp_path / "known_hosts")})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert "unreachable over SSH" in r.stdout and "Connection refused" in r.stdout, r.stdout
    assert "no answer within 3 s" in r.stdout, r.stdout
    # whom to call, next to the red rows: each hospital's own engineer
    assert "Петров Пётр Сергеевич" in r.stdout and "+7 900 000-01-10" in r.stdout
    assert "Васильев Игорь Николаевич" in r.stdout and "+7 900 000-02-10" in r.stdout
    assert 'kontur_check_reachable{node="rural-gw"} 0' in prom.read_text()
    j = kontur("check", "-i", str(region), "--secrets", str(secrets), "--node", "city-lami", "--json",
               "--timeout", "3", env={"KONTUR_KNOWN_HOSTS": str(tmp_path / "known_hosts")})
    assert j.returncode == 1
    doc = json.loads(j.stdout)
    assert doc["level"] == "red" and list(doc["nodes"]) == ["city-lami"]
    assert doc["nodes"]["city-lami"]["responsible"][0]["name"] == "Петров Пётр Сергеевич"


def test_an_audit_reports_its_controls_by_id_as_html_junit_and_json_without_a_secret(tmp_path):
    """The hosts do not answer here, so the controls fail: the report names them
    KONTUR-…[node] with impact and reference, its JUnit validates against the
    schema CI tools read, its pages open in Chromium, and the service password
    the secrets store holds for the node is nowhere in it."""
    region = loopback_region(tmp_path, {"city-lami": free_port()})
    store = SecretStore(tmp_path / "secrets")
    secret = store.password("nodes/city-lami/kontur")
    report = tmp_path / "report"
    # Orthanc's plain HTTP port answers from outside: the live probe must see it
    open_http = socket.socket()
    open_http.bind(("127.43.1.10", 8042))
    open_http.listen(4)
    try:
        r = kontur("audit", "-i", str(region), "--node", "city-lami", "--secrets", str(tmp_path / "secrets"),
                   "-k", "secure_http_server or credentials_file or plain_http", "--report", str(report),
                   env={"KONTUR_KNOWN_HOSTS": str(tmp_path / "known_hosts")})
    finally:
        open_http.close()
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr
    assert "FAILED kontur::KONTUR-SEC-04[city-lami]" in r.stdout
    assert "3 finding(s): KONTUR-NET-04[city-lami], KONTUR-SEC-01[city-lami], KONTUR-SEC-04[city-lami]" in r.stdout, \
        r.stdout[-1500:]
    assert "127.43.1.10:8042 (Orthanc's plain HTTP) accepts connections from outside" in r.stdout
    junit = report / "junit.xml"
    xmlschema.XMLSchema(str(REPO / "tests" / "data" / "junit.xsd")).validate(str(junit))
    xml = junit.read_text()
    assert 'name="KONTUR-SEC-04[city-lami]" classname="kontur.audit.city-lami"' in xml, xml[:2000]
    assert "impact 1.0; reference: Orthanc Book faq/security: IsHttpServerSecure" in xml
    doc = json.loads((report / "report.json").read_text())
    assert doc["compliant"] is False
    assert {c["control"] for c in doc["controls"]} == {"KONTUR-SEC-01", "KONTUR-SEC-04", "KONTUR-NET-04"}
    assert all(c["hospital"] == "city" for c in doc["controls"])
    page = (report / "city.html").read_text()
    assert "KONTUR-SEC-04[city-lami]" in page and "Городская больница" in page
    for f in report.iterdir():
        assert secret not in f.read_text(), f
    assert secret not in r.stdout + r.stderr
    with Chromium() as browser:
        dom = browser.dom((report / "index.html").as_uri())
        assert "ГАУЗ «Городская больница №1»" in dom and "KONTUR-SEC-04[city-lami]" in dom
        shot = browser.screenshot((report / "index.html").as_uri(), tmp_path / "audit.png")
    keep_artefact(shot, "audit-report-index.png")


def test_the_controls_run_the_testinfra_way_with_its_own_options(tmp_path):
    """``pytest checks/ --hosts=…``: testinfra's host list picks the nodes, its ssh options are used."""
    region = loopback_region(tmp_path, {"city-lami": free_port()})
    SecretStore(tmp_path / "secrets").password("nodes/city-lami/kontur")
    ssh = tmp_path / "ssh.conf"
    ssh.write_text(f"Host *\n  ConnectTimeout 1\n  BatchMode yes\n  LogLevel DEBUG1\n"
                   f"  UserKnownHostsFile {tmp_path / 'kh'}\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "checks/", "-q", "-p", "no:cacheprovider", "-rfE",
                        "--inventory", str(region), "--secrets", str(tmp_path / "secrets"),
                        "--hosts", "ssh://auditor@city-lami", "--ssh-config", str(ssh), "-k", "credentials_file"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 1, p.stdout[-2000:]
    assert "FAILED kontur::KONTUR-SEC-01[city-lami]" in p.stdout and "tsami" not in p.stdout.split("FAILED")[1]
    assert "debug1: Connecting to 127.43.1.10" in p.stdout, p.stdout[-2000:]   # its --ssh-config's LogLevel
    assert "port {}: Connection refused".format(region.read_text().split("ssh: ")[1].split("}")[0]) in p.stdout


def test_the_checks_ssh_asks_for_x25519_and_openssh_takes_it(tmp_path):
    """The probe's sessions carry no secret: X25519 alone (reach.CHECK_KEX) spares the control machine the
    post-quantum hybrid's key generation; deploys keep OpenSSH's default."""
    from kontur.check import Target
    from kontur.inventory import load
    from kontur.reach import CHECK_KEX, production
    region = load(loopback_region(tmp_path, {"city-lami": free_port()}))
    SecretStore(tmp_path / "secrets").password("nodes/city-lami/kontur")
    argv = Target(region, False, str(tmp_path / "secrets")).ssh("city-lami").argv("127.43.1.10", "true")
    assert f"KexAlgorithms={CHECK_KEX}" in argv
    assert not any(a.startswith("KexAlgorithms") for a in production().argv("127.43.1.10", "true"))
    # ssh(1) itself parses the option as given (-G: print the configuration, connect nowhere)
    p = subprocess.run([*argv[:-2], "-G", *argv[-2:]], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert f"kexalgorithms {CHECK_KEX}" in p.stdout.splitlines()
