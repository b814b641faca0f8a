# SPDX-License-Identifier: AGPL-3.0-or-later
"""Deploy pieces that need no host."""
from __future__ import annotations

from deploys.base.facts import DirectoryEntries, InstalledPackages, PostgresqlRole, UnitStates
from deploys.postgresql import scram_verifier
from kontur.inventory import EXAMPLE_INVENTORY as EXAMPLE


def test_scram_verifier_is_stable_and_salted_per_role():
    v = scram_verifier("secret", "orthanc")
    assert v == scram_verifier("secret", "orthanc")
    assert v != scram_verifier("secret", "other")
    assert v.startswith("SCRAM-SHA-256$4096:")
    head, keys = v.split("$", 1)[1].split("$")
    assert len(keys.split(":")) == 2


def test_unit_states_parse_systemctl_show():
    out = ["Id=orthanc.service", "ActiveState=active", "UnitFileState=enabled", "MainPID=42", "",
           "Id=nginx.service", "ActiveState=inactive", "UnitFileState=disabled", "MainPID=0"]
    assert UnitStates().process(out) == {
        "orthanc.service": {"active": True, "enabled": True, "pid": 42},
        "nginx.service": {"active": False, "enabled": False, "pid": 0},
    }


def test_installed_packages_only_counts_installed():
    assert InstalledPackages().process(["ii  orthanc", "rc  nginx", "ii  postgresql"]) == {"orthanc", "postgresql"}


def test_directory_entries_sorted():
    assert DirectoryEntries().process(["b.json", "", "a.json"]) == ["a.json", "b.json"]


def test_postgresql_role_fact():
    f = PostgresqlRole()
    assert f.process(["running no"]) == {"running": False, "verifier": None, "owner": None}
    assert f.process(["verifier SCRAM-x", "owner orthanc", "running yes"]) == \
        {"running": True, "verifier": "SCRAM-x", "owner": "orthanc"}


def test_path_states_parse():
    from deploys.base.facts import PathStates
    out = ["path|/etc/orthanc/orthanc.json|regular file|640|root|orthanc|" + "a" * 40,
           "path|/etc/orthanc|directory|750|root|orthanc|-",
           "link|/etc/nginx/sites-enabled/kontur.conf|/etc/nginx/sites-available/kontur.conf"]
    got = PathStates().process(out)
    assert got["/etc/orthanc/orthanc.json"] == {"type": "file", "mode": 0o640, "user": "root",
                                                "group": "orthanc", "sha1": "a" * 40}
    assert got["/etc/orthanc"]["type"] == "dir" and got["/etc/orthanc"]["sha1"] is None
    assert got["/etc/nginx/sites-enabled/kontur.conf"]["type"] == "link"


def test_deploy_refuses_an_unknown_node_in_limit(tmp_path, monkeypatch):
    """Refused before any host is contacted (exit 2)."""
    from deploy_helpers import kontur
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "secrets"))
    r = kontur("deploy", "-i", str(EXAMPLE), "--limit", "no-such-node", "--dry-run")
    assert r.rc == 2, r.out
    assert "unknown node 'no-such-node'" in r.out and "Traceback" not in r.out


def test_deploy_never_takes_the_example_region_by_default(tmp_path, monkeypatch):
    """Other commands read the example region without -i; a deploy must be told which region (issue 14)."""
    from deploy_helpers import kontur
    monkeypatch.delenv("KONTUR_INVENTORY", raising=False)
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "secrets"))
    r = kontur("deploy", "--dry-run")
    assert r.rc == 2, r.out
    assert "needs the region's inventory: -i FILE or KONTUR_INVENTORY" in r.out and "Traceback" not in r.out
    assert not (tmp_path / "secrets").exists()          # refused before anything, not even a store made


def test_deploy_lab_without_a_lab_says_so(tmp_path, monkeypatch):
    from deploy_helpers import kontur
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "no-lab"))
    r = kontur("deploy", "--lab", "--dry-run")
    assert r.rc == 1, r.out
    assert "no lab is running" in r.out and "Traceback" not in r.out


def test_a_production_deploy_without_a_terminal_needs_yes(tmp_path):
    """Refused before any host is contacted (exit 2); --dry-run and --lab never ask."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, KONTUR_SECRETS=str(tmp_path / "secrets"))
    p = subprocess.run([sys.executable, "-m", "kontur", "deploy", "-i", str(EXAMPLE)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "asks before it changes them" in p.stderr and "--yes" in p.stderr and "Traceback" not in p.stderr
    assert "connecting" not in p.stdout and not (tmp_path / "secrets").exists()
    p = subprocess.run([sys.executable, "-m", "kontur", "deploy", "-i", str(EXAMPLE), "--serial", "0"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "--serial" in p.stderr, p.stderr


def test_the_summary_counts_hosts_a_failed_batch_left_alone():
    from kontur.deploy import DeployResult, HostResult
    r = DeployResult({"a": HostResult("a", changed=2), "b": HostResult("b", failed_step="Orthanc"),
                      "c": HostResult("c", skipped=True)})
    assert r.summary() == "hosts: 3, changed operations: 2, failed: 1, not started: 1"
    assert DeployResult({"a": HostResult("a")}).summary() == "hosts: 1, changed operations: 0, failed: 0"


def test_deploy_of_an_invalid_inventory_prints_validates_messages(tmp_path):
    """Before: a traceback (the runner loaded the file itself)."""
    import os
    import subprocess
    import sys
    bad = tmp_path / "region.yaml"
    bad.write_text(EXAMPLE.read_text(encoding="utf-8").replace("role: tsami", "role: tsamii", 1), encoding="utf-8")
    env = dict(os.environ, KONTUR_SECRETS=str(tmp_path / "secrets"))
    for extra in (["--dry-run"], ["--yes"]):
        p = subprocess.run([sys.executable, "-m", "kontur", "deploy", "-i", str(bad), *extra],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, p.stdout + p.stderr
        assert "Traceback" not in p.stderr and "the region is not sound" in p.stderr and "line " in p.stderr


def test_the_runner_reports_each_hosts_stages_to_its_progress_callback(tmp_path):
    """run_deploy's on_host hears every host's stage (a live board plugs in there);
    a host whose SSH port is closed fails at "connect", the others are not touched.
    Real ssh to loopback ports where nothing listens; run in its own process
    (the runner patches the process for gevent)."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path
    small = Path(__file__).resolve().parents[1] / "data" / "small-region.yaml"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # closed again: nothing listens there
    text = small.read_text(encoding="utf-8").replace("10.43.", "127.43.")
    text = text.replace("address: 127.43.1.10", f"address: 127.43.1.10\n    ports: {{ssh: {port}}}", 1)
    region = tmp_path / "region.yaml"
    region.write_text(text, encoding="utf-8")
    script = (
        "import json, sys\n"
        "from kontur.deploy import STAGES, deploy_target, run_deploy\n"
        f"where = deploy_target({str(region)!r}, secrets_dir={str(tmp_path / 'secrets')!r})\n"
        "events = []\n"
        "r = run_deploy(where, limit=['city-lami'], dry_run=True, emit=lambda line, kind='progress': None,\n"
        "               on_host=lambda p: events.append([p.node, p.stage, p.step]))\n"
        "print(json.dumps({'events': events, 'failed': [(h.node, h.failed_step) for h in r.failed],\n"
        "                  'hosts': list(r.hosts), 'stages': list(STAGES)}))\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, KONTUR_SSH_KEY="", KONTUR_KNOWN_HOSTS=str(tmp_path / "known_hosts")))
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["hosts"] == ["city-lami"]
    assert got["failed"] == [["city-lami", "connect"]]
    assert got["events"] == [["city-lami", "connect", None], ["city-lami", "failed", "connect"]]
    assert got["stages"] == ["connect", "store check", "prepare", "confirm", "execute"]
