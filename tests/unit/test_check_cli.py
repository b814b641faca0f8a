"""``kontur check`` and the controls under checks/ as their users meet them
(issue 13's named defects): a bad inventory gets validate's message, not a
traceback; a control is reported by its ID with its impact and reference; a
failing control's report carries no secret."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"


def kontur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_a_bad_inventory_gets_validates_message_and_exit_2(tmp_path):
    bad = tmp_path / "region.yaml"
    bad.write_text(SMALL.read_text(encoding="utf-8").replace("role: lami", "role: lamy", 1), encoding="utf-8")
    r = kontur("check", "-i", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "line " in r.stderr and "lamy" in r.stderr and "Traceback" not in r.stdout + r.stderr, r.stderr
    r = kontur("check", "-i", str(SMALL), "--node", "nowhere")
    assert r.returncode == 2 and "--node nowhere: not in the inventory" in r.stderr, r.stderr


def test_a_failing_control_is_named_by_its_id_and_its_report_carries_no_secret(tmp_path):
    """The hosts are unreachable here, so the controls fail; the report names them
    KONTUR-…[node] with impact and reference, and the service password the
    secrets store holds for the node is nowhere in it."""
    store = SecretStore(tmp_path / "secrets")
    secret = store.password("nodes/city-lami/kontur")
    ssh = tmp_path / "ssh.conf"
    ssh.write_text("Host *\n  ConnectTimeout 1\n  ConnectionAttempts 1\n  BatchMode yes\n")
    junit = tmp_path / "report.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "checks/", "-q", "-p", "no:cacheprovider", "-rfE",
                        "--inventory", str(SMALL), "--kontur-node", "city-lami", "--secrets", str(tmp_path / "secrets"),
                        "--kontur-ssh-config", str(ssh), f"--junitxml={junit}", "-k", "secure_http_server"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 1, p.stdout[-2000:]
    xml = junit.read_text()
    assert 'classname="kontur" name="KONTUR-SEC-04[city-lami]"' in xml, xml[:2000]
    assert '<property name="impact" value="1.0" />' in xml and "IsHttpServerSecure" in xml
    assert "FAILED kontur::KONTUR-SEC-04[city-lami]" in p.stdout
    assert secret not in xml and secret not in p.stdout + p.stderr
