"""The inventory model and every validation rule, each with a failing example."""
from __future__ import annotations

import pytest

from kontur.inventory import load
from kontur.model import Role
from kontur.testing.inventory import edited, one_problem, problems_of


def test_example_region_is_sound():
    region = load()
    assert region.nodes_by_role(Role.TSAMI) == ["tsami"]
    assert {h.type.value for h in region.hospitals.values()} == {1, 2, 3}
    onco = region.hospitals["onco"]
    assert {m.modality for m in onco.modalities} >= {"CT", "MR", "NM", "DX", "MG"}
    assert sum(m.studies_per_day for m in onco.modalities) == 161  # Krasnoyarsk, table 1 of seed 000
    assert any(h.intermittent_link for h in region.hospitals.values())  # the mobile unit
    assert region.nodes_by_role(Role.RESEARCH)


def test_defaults_and_overrides():
    region = load()
    assert region.ports("tsami").dicom == 4242
    assert region.disk("onco-lami").warning_percent == 75
    assert region.disk("gkb3-lami").warning_percent == 80
    assert region.index_of("crb-gw") == "sqlite"
    assert region.index_of("onco-lami") == "postgresql"


@pytest.mark.parametrize("aet, fragment", [
    ("", "expected 1 to 16"),
    ("A" * 17, "17 characters"),
    ("BAD\\AET", "backslash"),
    ("    ", "only spaces"),
    ("TAB\tAET", "contains"),
    ("ИВАНОВ", "ASCII"),
])
def test_invalid_ae_titles(example_text, aet, fragment):
    text = edited(example_text, lambda d: d["hospitals"]["onco"]["modalities"][0].__setitem__("aet", aet))
    one_problem(text, "hospitals.onco.modalities[0].aet", fragment)


def test_ae_titles_unique_in_region(example_text):
    text = edited(example_text, lambda d: d["hospitals"]["gkb3"]["modalities"][0].__setitem__("aet", "ONCO_LAMI"))
    one_problem(text, "hospitals.gkb3.modalities[0].aet", "already used by nodes.onco-lami")


def test_a_modality_may_not_take_the_hl7_services_ae_title(example_text):
    text = edited(example_text, lambda d: d["hospitals"]["gkb3"]["modalities"][0].__setitem__("aet", "KONTUR_HL7"))
    one_problem(text, "hospitals.gkb3.modalities[0].aet", "kontur's HL7 service's")


def test_two_services_on_one_host_port(example_text):
    def edit(d):
        d["nodes"]["tsami"]["ports"] = {"dicom": 443}
    one_problem(edited(example_text, edit), "nodes.tsami.ports", "already taken")


def test_modality_and_mis_share_an_endpoint(example_text):
    def edit(d):
        d["hospitals"]["onco"]["mis"]["host"] = "10.42.1.21"
        d["hospitals"]["onco"]["mis"]["port"] = 104
    one_problem(edited(example_text, edit), "hospitals.onco.mis.port", "10.42.1.21:104 is already taken by modality ONCO_CT1")


def test_unknown_references(example_text):
    def edit(d):
        d["nodes"]["onco-lami"]["upstream"] = "nowhere"
        d["hospitals"]["gkb3"]["node"] = "gkb3-typo"
        d["users"][0]["hospital"] = "no-such"
        d["users"][0]["role"] = "surgeon"
    found = problems_of(edited(example_text, edit))
    joined = "\n".join(found)
    assert "nodes.onco-lami.upstream: unknown node 'nowhere'" in joined
    assert "hospitals.gkb3.node: unknown node 'gkb3-typo'" in joined
    assert "users[0].hospital: unknown hospital 'no-such'" in joined
    assert "users[0].role: unknown role 'surgeon'" in joined


@pytest.mark.parametrize("hospital, fragment", [
    ("onco", "needs its own LAMI"),         # type 1: a LAMI of its own
    ("crb", "no route to the TsAMI"),       # type 2: a gateway route to the TsAMI
])
def test_hospital_without_a_node(example_text, hospital, fragment):
    def edit(d):
        del d["hospitals"][hospital]["node"]
    one_problem(edited(example_text, edit), f"hospitals.{hospital}.node", fragment)


def test_type1_hospital_pointing_at_a_gateway(example_text):
    def edit(d):
        d["hospitals"]["onco"]["node"] = "crb-gw"
        d["hospitals"]["crb"]["node"] = "onco-lami"
    found = "\n".join(problems_of(edited(example_text, edit)))
    assert "hospitals.onco.node: a type-1 hospital needs a LAMI, but 'crb-gw' is a gateway" in found


def test_upstream_loop_never_reaches_tsami(example_text):
    def edit(d):
        d["nodes"]["crb-gw"]["upstream"] = "mammo-gw"
        d["nodes"]["mammo-gw"]["upstream"] = "crb-gw"
    found = "\n".join(problems_of(edited(example_text, edit)))
    assert "never reaches the TsAMI" in found
    assert "hospitals.crb.node: a type-2 hospital has no route to the TsAMI" in found


@pytest.mark.parametrize("field, value, fragment", [
    (("nodes", "tsami", "address"), "10.42.0.256", "not an IPv4 address"),
    (("nodes", "tsami", "address"), "tsami.local", "not an IPv4 address"),
    (("hospitals", "onco", "modalities", 0, "port"), 70000, "less than or equal to 65535"),
    (("hospitals", "onco", "modalities", 0, "port"), 0, "greater than or equal to 1"),
    (("hospitals", "onco", "modalities", 0, "port"), "http", "valid integer"),
    (("hospitals", "onco", "replication", "windows", 0), "25:00-07:00", "outside 00:00-23:59"),
    (("hospitals", "onco", "replication", "windows", 0), "8pm-7am", "expected HH:MM-HH:MM"),
    (("hospitals", "onco", "replication", "windows", 0), "07:00-07:00", "same time"),
    (("hospitals", "onco", "network"), "10.42.1.0/33", "not an IPv4 network"),
    (("region", "timezone"), "Mars/Olympus", "not a time zone"),
    (("hospitals", "onco", "replication", "policy"), "sometimes", "is not allowed"),
    (("nodes", "onco-lami", "disk", "warning_percent"), 95, "must be below"),
])
def test_malformed_values(example_text, field, value, fragment):
    def edit(d):
        node = d
        for part in field[:-1]:
            node = node[part]
        node[field[-1]] = value
    path = ""
    for part in field:
        path += f"[{part}]" if isinstance(part, int) else ("." if path else "") + part
    if field[-2:] == ("disk", "warning_percent"):
        path = "nodes.onco-lami.disk"
    one_problem(edited(example_text, edit), path, fragment)


def test_node_name_must_be_a_host_name(example_text):
    text = example_text.replace("\n  ref-web:\n", "\n  Ref_Web:\n").replace("node: ref-web", "node: Ref_Web")
    one_problem(text, "nodes.Ref_Web", "not a valid host name")


def test_address_outside_secure_network(example_text):
    text = edited(example_text, lambda d: d["nodes"]["research"].__setitem__("address", "192.0.2.20"))
    one_problem(text, "nodes.research.address", "outside the region's secure network")


def test_unknown_field_is_named(example_text):
    text = edited(example_text, lambda d: d["nodes"]["tsami"].__setitem__("adress", "10.42.0.11"))
    one_problem(text, "nodes.tsami.adress", "unknown field")


def test_secrets_are_refused_in_the_inventory(example_text):
    text = edited(example_text, lambda d: d["users"][0].__setitem__("password", "hunter2"))
    found = problems_of(text)
    assert len(found) == 1 and "users[0].password" in found[0] and "secrets never go in the inventory" in found[0]


def test_responsible_staff_required(example_text):
    text = edited(example_text, lambda d: d["hospitals"]["gkb3"].__setitem__("staff", []))
    one_problem(text, "hospitals.gkb3.staff", "R7")


def test_problems_carry_line_numbers(example_text):
    text = edited(example_text, lambda d: d["hospitals"]["onco"]["modalities"][2].__setitem__("aet", "X" * 20))
    found = problems_of(text)
    lines = text.splitlines()
    line_no = int(found[0].split(":")[0].removeprefix("line "))
    assert "X" * 20 in lines[line_no - 1]


def test_yaml_syntax_error_has_line_number(example_text):
    lines = example_text.splitlines()
    idx = next(i for i, l in enumerate(lines) if "aet: ONCO_MR1" in l)
    lines[idx] = lines[idx] + ": ["
    found = problems_of("\n".join(lines) + "\n")
    assert found[0].startswith(f"line {idx + 1}") and "YAML syntax error" in found[0]


def test_not_a_mapping():
    assert "expected a mapping" in problems_of("- just\n- a list\n")[0]


def test_several_problems_reported_at_once(example_text):
    def edit(d):
        d["nodes"]["tsami"]["aet"] = "A" * 20
        d["hospitals"]["onco"]["modalities"][1]["host"] = "nope"
    assert len(problems_of(edited(example_text, edit))) >= 2


def test_with_addresses_translates_everything():
    region = load()
    mapping = {a: f"198.18.0.{i + 2}" for i, a in enumerate(region.all_addresses())}
    lab = region.with_addresses(mapping)
    assert all(n.address.startswith("198.18.0.") for n in lab.nodes.values())
    assert all(m.host.startswith("198.18.0.") for h in lab.hospitals.values() for m in h.modalities)
    assert lab.hospitals["onco"].mis.host.startswith("198.18.0.")
    assert region.nodes["tsami"].address == "10.42.0.10"  # the original is untouched


@pytest.mark.parametrize("hospitals", [1, 20, 200, 252])
def test_a_generated_region_of_any_size_validates(tmp_path, hospitals):
    """The regions bench/ and the hostile-input tests generate (hospital 200's node
    once took the reference centre's address)."""
    from kontur.inventory import load
    from kontur.regiongen import generate_region

    p = tmp_path / "region.yaml"
    p.write_text(generate_region(hospitals))
    region = load(p)
    assert len(region.hospitals) == hospitals + 3 and "refcentre" in region.nodes
