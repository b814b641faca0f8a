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
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"no lab is running from {tmp_path / 'no-lab'}" in r.stderr, r.stderr
    # how to start one, or -- when the suite's own lab is up meanwhile -- where that lab lives
    assert "kontur lab up" in r.stderr or "KONTUR_LAB_DIR=" in r.stderr, r.stderr


# --- kontur users ------------------------------------------------------------------

def _sheet(path: Path) -> dict[str, str]:
    fields = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("login", "password", "certificate"):
            fields[key] = value.strip()
    fields["passphrase"] = fields["certificate"].split("passphrase: ")[1].rstrip(")")
    return fields


@pytest.mark.parametrize("legacy", [False, True])
def test_users_issue_writes_a_browser_certificate_and_a_sheet(tmp_path, legacy):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    env = {"KONTUR_SECRETS": str(tmp_path / "secrets")}
    out_dir = tmp_path / "hand-over"
    r = kontur("users", "issue", "ivanova", "--out", str(out_dir), *(["--legacy-p12"] if legacy else []),
               env_extra=env)
    assert r.returncode == 0, r.stderr
    p12, txt = out_dir / "ivanova.p12", out_dir / "ivanova.txt"
    assert p12.stat().st_mode & 0o777 == 0o600 and txt.stat().st_mode & 0o777 == 0o600
    assert out_dir.stat().st_mode & 0o077 == 0
    sheet = _sheet(txt)
    assert sheet["login"] == "ivanova" and len(sheet["password"]) >= 24
    assert "https://10.42.1.10:443/app/explorer.html" in txt.read_text()      # onco-lami, her hospital's node
    key, cert, cas = pkcs12.load_key_and_certificates(p12.read_bytes(), sheet["passphrase"].encode())
    assert key is not None
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ivanova"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ca = x509.load_pem_x509_certificate((tmp_path / "secrets" / "pki" / "ca.crt").read_bytes())
    assert [c.subject for c in cas] == [ca.subject] and cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(p12.read_bytes(), b"wrong")
    # the password is the one the deploy renders into the nodes, and stays the same
    again = kontur("users", "issue", "ivanova", "--out", str(tmp_path / "again"), env_extra=env)
    assert again.returncode == 0
    assert _sheet(tmp_path / "again" / "ivanova.txt")["password"] == sheet["password"]
    rendered = kontur("render", "--node", "onco-lami", "--out", str(tmp_path / "out"), env_extra=env)
    assert rendered.returncode == 0, rendered.stderr
    creds = (tmp_path / "out" / "onco-lami" / "etc" / "orthanc" / "credentials.json").read_text()
    assert f'"ivanova": "{sheet["password"]}"' in creds


def test_users_issue_refuses_an_unknown_login(tmp_path):
    r = kontur("users", "issue", "nobody", "--out", str(tmp_path / "o"),
               env_extra={"KONTUR_SECRETS": str(tmp_path / "secrets")})
    assert r.returncode == 2 and "no user 'nobody'" in r.stderr and "ivanova" in r.stderr
    assert not (tmp_path / "o").exists()


def test_users_list_shows_where_each_user_has_an_account():
    r = kontur("users", "list", env_extra={"COLUMNS": "250"})
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if "ivanova" in line)
    assert "radiologist" in row and "view, download" in row and "onco-lami" in row and "tsami" in row


def test_a_legacy_device_is_named_as_such_everywhere_it_shows_up(tmp_path):
    """legacy_folder is documented, not silently ignored: validate notes it, show
    says how its studies come in, the sheet refuses, and the renderer leaves it
    out of the node's DICOM peers and firewall."""
    from kontur.inventory import parse_yaml
    text = EXAMPLE.read_text()
    doc = parse_yaml(text, str(EXAMPLE))
    onco = doc["hospitals"]["onco"]
    legacy = onco["modalities"][0]
    legacy["legacy_folder"] = True
    from kontur.inventory import dump_rt
    path = tmp_path / "region.yaml"
    path.write_text(dump_rt(doc))
    shutil.copytree(EXAMPLE.parent / "classifier", tmp_path / "classifier")
    aet, host = legacy["aet"], legacy["host"]

    r = kontur("validate", "-i", str(path))
    assert r.returncode == 0, r.stderr
    assert f"note: modality {aet} of hospital onco: a legacy device" in r.stderr
    r = kontur("show", "-i", str(path), env_extra={"COLUMNS": "250"})
    assert any(aet in ln and "files by hand" in ln for ln in r.stdout.splitlines()), r.stdout
    r = kontur("inventory", "sheet", aet, "-i", str(path))
    assert r.returncode == 2 and "no DICOM connection sheet" in r.stderr

    env = {"KONTUR_SECRETS": str(tmp_path / "secrets")}
    r = kontur("render", "-i", str(path), "--node", "onco-lami", "--out", str(tmp_path / "out"), env_extra=env)
    assert r.returncode == 0, r.stderr
    node_dir = tmp_path / "out" / "onco-lami"
    assert aet not in (node_dir / "etc" / "orthanc" / "dicom.json").read_text()
    assert host not in (node_dir / "etc" / "nftables.conf").read_text()
    others = [m["aet"] for m in onco["modalities"][1:]]
    assert others and all(a in (node_dir / "etc" / "orthanc" / "dicom.json").read_text() for a in others)


def test_show_on_an_80_column_terminal_cuts_no_address_ae_title_or_node_name():
    """Issue 14: rich shortened them with "…" to fit; now the other columns wrap and fold instead."""
    region = load(EXAMPLE)
    r = kontur("show", env_extra={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    cells = {c.strip() for line in r.stdout.splitlines() for c in line.split("│")}
    for name, spec in region.nodes.items():
        assert name in cells and spec.address in cells, name
        assert spec.aet is None or spec.aet in cells, spec.aet
    for h in region.hospitals.values():
        for m in h.modalities:
            assert m.aet in cells and f"{m.host}:{m.port}" in cells, m.aet


def test_reidentify_sends_back_only_to_a_hospital_archive_the_tsami_sends_to():
    r = kontur("research", "reidentify", "R42-X", "--reason", "r", "--as", "archivist", "--send-to", "research",
               "-i", str(EXAMPLE))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ("--send-to 'research' is not a hospital archive tsami sends to; expected one of: gkb3-lami, "
            "onco-lami, perinatal-lami") in r.stderr
