"""The kontur command line: help, exit codes, errors on stderr, planner edits."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kontur.inventory import load

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"


def kontur(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


@pytest.fixture
def region_file(tmp_path) -> Path:
    p = tmp_path / "region.yaml"
    shutil.copy(EXAMPLE, p)
    return p


def test_help_reads_well():
    r = kontur("--help")
    assert r.returncode == 0
    for word in ("validate", "render", "show", "inventory", "Exit codes"):
        assert word in r.stdout


@pytest.mark.parametrize("cmd", [["validate"], ["render"], ["show"], ["inventory"], ["inventory", "add-hospital"],
                                 ["inventory", "add-modality"], ["inventory", "remove-modality"],
                                 ["inventory", "remove-hospital"], ["inventory", "sheet"]])
def test_every_subcommand_has_help(cmd):
    r = kontur(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage: kontur" in r.stdout and len(r.stdout.splitlines()) > 4


def test_validate_ok_and_bad(region_file):
    assert kontur("validate", "-i", str(region_file)).returncode == 0
    region_file.write_text(region_file.read_text().replace("aet: ONCO_CT1", "aet: ONCO_MR1"))
    r = kontur("validate", "-i", str(region_file))
    assert r.returncode == 2
    assert "hospitals.onco.modalities[1].aet: AE title 'ONCO_MR1' is already used" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_file_and_usage_errors(tmp_path):
    r = kontur("validate", "-i", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "file not found" in r.stderr and "Traceback" not in r.stderr
    r = kontur("validate", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr
    r = kontur("render", "--node", "no-such-node", "--out", str(tmp_path / "o"),
               env_extra={"KONTUR_SECRETS": str(tmp_path / "s")})
    assert r.returncode == 2 and "unknown node 'no-such-node'" in r.stderr


def test_binary_garbage_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    r = kontur("validate", "-i", str(p))
    assert r.returncode == 2 and "not UTF-8" in r.stderr


def test_render_writes_one_folder_per_node(tmp_path):
    r = kontur("render", "--out", str(tmp_path / "out"), env_extra={"KONTUR_SECRETS": str(tmp_path / "s")})
    assert r.returncode == 0, r.stderr
    region = load()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(region.nodes)
    cred = tmp_path / "out" / "onco-lami" / "etc" / "orthanc" / "credentials.json"
    assert cred.exists() and oct(cred.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "out" / "onco-lami" / "manifest.json").exists()


def test_show_prints_nodes_and_policies():
    r = kontur("show")
    assert r.returncode == 0
    for word in ("onco-lami", "pathology", "on-demand", "ONCO_CT1", "20:00-07:00"):
        assert word in r.stdout


def test_planner_round_trip_keeps_comments_and_order(region_file):
    original = region_file.read_text()
    r = kontur("inventory", "add-hospital", "gkb5", "-i", str(region_file), "--type", "1", "--title", "ГКБ №5",
               "--network", "10.42.7.0/24", "--address", "10.42.7.10", "--staff-name", "Иванов И.И.",
               "--staff-position", "инженер", "--work-phone", "+7 3842 00-07-10", "--mobile-phone", "+7 900 000-07-10",
               "--policy", "pathology", "--window", "21:00-06:00")
    assert r.returncode == 0, r.stderr
    r = kontur("inventory", "add-modality", "gkb5", "-i", str(region_file), "--aet", "GKB5_CT1",
               "--host", "10.42.7.21", "--modality", "CT", "--vendor", "Siemens")
    assert r.returncode == 0, r.stderr
    edited = region_file.read_text()
    assert "# Tyumen/Krasnoyarsk model" in edited and "# the region's secure network" in edited
    assert edited.startswith(original.split("nodes:")[0])
    region = load(region_file)
    assert region.hospitals["gkb5"].node == "gkb5-lami"
    assert region.nodes["gkb5-lami"].upstream == "tsami"
    assert region.find_modality("GKB5_CT1")[0] == "gkb5"
    assert kontur("inventory", "remove-modality", "GKB5_CT1", "-i", str(region_file)).returncode == 0
    assert kontur("inventory", "remove-hospital", "gkb5", "-i", str(region_file)).returncode == 0
    assert region_file.read_text() == original


@pytest.mark.parametrize("args, fragment", [
    (["add-modality", "onco", "--aet", "GKB3_CT1", "--host", "10.42.1.40", "--modality", "CT"], "already used"),
    (["add-modality", "onco", "--aet", "NEW1", "--host", "10.42.1.41", "--modality", "XX"], "not a modality code"),
    (["add-modality", "onco", "--aet", "NEW2", "--host", "10.42.1.21", "--port", "104", "--modality", "CT"], "already taken"),
    (["add-modality", "nowhere", "--aet", "NEW3", "--host", "10.42.1.42", "--modality", "CT"], "unknown hospital"),
    (["add-hospital", "onco", "--type", "1", "--title", "x", "--address", "10.42.9.10"], "already exists"),
    (["add-hospital", "new", "--type", "1", "--title", "x", "--address", "10.42.9.10"], "no responsible staff"),
    (["remove-modality", "NOPE"], "no modality"),
    (["remove-hospital", "onco"], "unknown hospital 'onco'"),
])
def test_planner_refuses_what_validation_would(region_file, args, fragment):
    before = region_file.read_text()
    r = kontur("inventory", *args, "-i", str(region_file))
    assert r.returncode == 2, r.stdout + r.stderr
    assert fragment in r.stderr, r.stderr
    assert region_file.read_text() == before


def test_sheet_names_both_sides():
    r = kontur("inventory", "sheet", "ONCO_CT1")
    assert r.returncode == 0
    for word in ("ONCO_CT1", "10.42.1.21", "ONCO_LAMI", "10.42.1.10", "4242", "Петров"):
        assert word in r.stdout


def test_lab_mirror_options_that_exclude_each_other_are_refused(tmp_path):
    r = kontur("lab", "mirror", "--withhold", "dcmtk", "--full",
               env_extra={"KONTUR_LAB_DIR": str(tmp_path / "no-lab")})
    assert r.returncode == 2
    assert "--withhold and --full exclude each other" in r.stderr and "Traceback" not in r.stderr


def test_lab_mirror_without_a_lab_says_how_to_start_one(tmp_path):
    r = kontur("lab", "mirror", env_extra={"KONTUR_LAB_DIR": str(tmp_path / "no-lab")})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "kontur lab up" in r.stderr, r.stderr
