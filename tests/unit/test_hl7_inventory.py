"""Issue 11 on the control side: the inventory's MIS endpoints and station
names, and what the renderer makes of them (the HL7 service's configuration,
unit, firewall rules, the worklist right of each modality)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kontur.inventory import InventoryError, load
from kontur.render import firewall_rules, hl7, render_node
from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"


def example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8").replace("classifier/procedures.csv",
                                                       str(EXAMPLE.parent / "classifier" / "procedures.csv"))


def problems(tmp_path, text: str) -> list[str]:
    p = tmp_path / "region.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InventoryError) as err:
        load(p)
    return [f"{x.path}: {x.message}" for x in err.value.problems]


def test_two_hospitals_with_one_mis_facility_are_refused(tmp_path):
    found = problems(tmp_path, example_text().replace("      facility: GKB3\n", "      facility: ONCO\n"))
    assert any("mis.facility" in p and "'ONCO'" in p and "onco" in p for p in found), found


def test_a_station_name_of_two_devices_is_refused(tmp_path):
    text = example_text().replace("        model: Ingenia 1.5T\n", "        model: Ingenia 1.5T\n        station_names: [ONCO_CT1]\n")
    found = problems(tmp_path, text)
    assert any("station_names" in p and "ONCO_CT1" in p and "two devices" in p for p in found), found


def test_the_hl7_port_cannot_be_a_port_the_node_already_uses(tmp_path):
    text = example_text().replace("hospitals:\n", "hospitals:\n", 1)
    text = text.replace("  onco-lami:\n", "  onco-lami:\n    ports:\n      hl7: 4242\n", 1)
    found = problems(tmp_path, text)
    assert any("4242" in p and "already taken" in p for p in found), found


@pytest.fixture
def store(tmp_path):
    return SecretStore(tmp_path / "secrets")


def test_a_lami_with_a_mis_gets_the_service_and_a_gateway_without_one_does_not(store):
    region = load(EXAMPLE)
    b = render_node(region, "onco-lami", store)
    assert "kontur-hl7.service" in b.services and "python3-hl7" in b.packages
    cfg = json.loads(b.file(hl7.CONFIG).content)
    onco = cfg["site"]["hospitals"][0]
    assert onco["facilities"] == ["ONCO"] and onco["issuer"] == "42-ONCO"
    mis = region.hospitals["onco"].mis
    assert (onco["mis_host"], onco["mis_port"]) == (mis.host, mis.port)
    spec = region.nodes["onco-lami"]
    assert cfg["notify"]["viewer_url"] == \
        f"https://{spec.address}:{region.ports('onco-lami').https}/kontur/view/{{patient}}/{{accession}}/{{study}}"
    assert {d["aet"] for d in onco["devices"]} >= {"ONCO_CT1", "ONCO_MR1"}
    assert "A06.09.005" in cfg["site"]["classifier"]
    unit = b.file(f"/etc/systemd/system/{hl7.UNIT}").text
    assert "User=orthanc" in unit and "pynetdicom-2.0.2-py3-none-any.whl" in unit
    assert any(f.path.endswith("pynetdicom-2.0.2-py3-none-any.whl") for f in b.files)
    policy = json.loads(b.file("/etc/kontur/policy.json").content)
    # the state in the LAMI's PostgreSQL (its own database, beside the index), which the plugin reads:
    # through the local socket as the orthanc user, so no password in either file
    pg = {"postgresql": {"host": "/var/run/postgresql", "port": region.ports("onco-lami").postgresql,
                         "dbname": "kontur_hl7", "user": "orthanc"}}
    assert policy["worklist"] == {"enabled": True, "db": pg, "events_socket": hl7.EVENTS_SOCKET}
    assert cfg["database"] == pg and cfg["events"] == {"socket": hl7.EVENTS_SOCKET}
    assert "RuntimeDirectory=kontur-hl7" in unit
    assert "python3-psycopg2" in b.packages and "After=network-online.target postgresql.service" in unit
    assert b.facts["postgresql"]["databases"] == ["kontur_hl7"]
    assert "password" not in json.dumps(cfg).lower()
    # a gateway (no PostgreSQL) keeps it in SQLite
    assert hl7.database(region, "crb-gw") == {"sqlite": hl7.DB}
    dicom = json.loads(b.file("/etc/orthanc/dicom.json").content)
    mods = dict(dicom["DicomModalities"])
    # the HL7 service itself, from loopback only: finds a result's study and stores its report (issue 12)
    service = mods.pop(hl7.REPORTS_MODALITY)
    assert (service["AET"], service["Host"], service["AllowFind"], service["AllowStore"]) == \
        (hl7.REPORTS_AET, "127.0.0.1", True, True)
    assert not service["AllowMove"] and not service["AllowGet"] and not service["AllowFindWorklist"]
    assert cfg["reports"] == {"host": "127.0.0.1", "port": region.ports("onco-lami").dicom,
                              "called_aet": region.nodes["onco-lami"].aet, "calling_aet": hl7.REPORTS_AET}
    assert all(m["AllowFindWorklist"] and not m["AllowFind"] for m in mods.values())
    crb = region.hospital_of("crb-gw")
    if region.hospitals[crb].mis is None:
        g = render_node(region, "crb-gw", store)
        assert "kontur-hl7.service" not in g.services


def test_the_firewall_admits_mllp_from_the_mis_only_and_mpps_from_the_modalities():
    region = load(EXAMPLE)
    rules = {r["port"]: r for r in firewall_rules(region, "onco-lami")}
    ports = region.ports("onco-lami")
    assert rules[ports.hl7]["sources"] == [region.hospitals["onco"].mis.host]
    assert set(rules[ports.mpps]["sources"]) == {m.host for m in region.hospitals["onco"].modalities}


def test_a_missing_wheel_fails_the_render_naming_it_and_the_fix(store, tmp_path, monkeypatch):
    from kontur import packages
    from kontur.errors import OperationFailed
    monkeypatch.setattr(packages, "WHEEL_DIR", tmp_path / "no-wheels")
    with pytest.raises(OperationFailed) as e:
        render_node(load(EXAMPLE), "onco-lami", store)
    assert "pynetdicom-2.0.2-py3-none-any.whl" in e.value.message and "./run setup" in e.value.hint
    # the host and the step that need it, like a package missing from the mirror
    assert e.value.message.startswith("onco-lami, step 'HL7 service: configure'")


@pytest.mark.parametrize("code", ["C34^1", "", "A" * 65, "C34|1"])
def test_a_pathology_code_an_hl7_field_cannot_carry_is_refused(tmp_path, code):
    text = example_text().replace("pathology_codes: [C34.0,", f"pathology_codes: [{json.dumps(code)}, C34.0,")
    found = problems(tmp_path, text)
    assert any("pathology_codes" in p and "expected 1-64 characters" in p for p in found), found


def test_the_viewer_url_points_at_the_archive_that_keeps_the_study():
    region = load(EXAMPLE)
    tsami = region.nodes["tsami"]
    assert hl7.viewer_url(region, "gkb3-lami").startswith(f"https://{region.nodes['gkb3-lami'].address}:443/kontur/view/")
    gw = "crb-gw"
    assert region.nodes[gw].role.value == "gateway" and region.nodes[gw].upstream == "tsami"
    assert hl7.viewer_url(region, gw) == (f"https://{tsami.address}:{region.ports('tsami').https}"
                                          "/kontur/view/{patient}/{accession}/{study}")
