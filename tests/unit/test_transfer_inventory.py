"""Issue 10 on the control side: the inventory's transfer package, its
classifier file, the issuers, and what the policy file carries to a node."""
from __future__ import annotations

from pathlib import Path

import pytest

from kontur.inventory import InventoryError, load, load_text
from kontur.policy import transfer_section

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"


def variant(tmp_path, text: str, name: str = "region.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as err:
        load(path)
    return [f"{p.path}: {p.message}" for p in err.value.problems]


def test_the_example_ships_its_classifier_and_uses_both_modes():
    region = load(EXAMPLE)
    assert region.transfer.classifier.version and "A06.09.005" in region.transfer.classifier.codes
    modes = {h.validation for h in region.hospitals.values()}
    assert modes == {"enforce", "warn"}
    onco = transfer_section(region, "onco-lami")
    assert onco["issuer"] == "42-ONCO" and onco["validation"]["mode"] == "enforce"
    assert onco["validation"]["classifier"]["codes"] == region.transfer.classifier.codes
    gkb3 = transfer_section(region, "gkb3-lami")
    assert gkb3["validation"]["mode"] == "warn" and "physician" not in gkb3["validation"]["rules"]
    assert transfer_section(region, "tsami")["enabled"] is False


def test_a_region_without_a_transfer_section_warns_and_holds_nothing():
    region = load(REPO / "tests" / "data" / "small-region.yaml")
    for node, spec in region.nodes.items():
        sec = transfer_section(region, node)
        if sec["enabled"]:
            assert sec["validation"]["mode"] == "warn" and sec["validation"]["classifier"] is None


@pytest.mark.parametrize("content,word", [
    ("code,name\nA1,x\nA1,y\n", "appears twice"),
    ("code,name\n,x\n", "empty code"),
    ("kod,imya\nA1,x\n", "expected columns 'code' and 'name'"),
    ("code,name\nA1\n", "1 column(s)"),
    ("code,name\n" + "A" * 17 + ",x\n", "not a DICOM code value"),
])
def test_a_malformed_classifier_is_a_clear_inventory_problem(tmp_path, content, word):
    (tmp_path / "c.csv").write_text(content, encoding="utf-8")
    text = EXAMPLE.read_text(encoding="utf-8").replace("classifier/procedures.csv", "c.csv")
    found = problems(variant(tmp_path, text))
    assert any("transfer.classifier.file" in p and word in p for p in found), found


def test_a_yaml_classifier_and_its_version(tmp_path):
    (tmp_path / "c.yaml").write_text('version: "other"\ncodes:\n  A06.09.005: КТ ОГК\n', encoding="utf-8")
    text = EXAMPLE.read_text(encoding="utf-8").replace("classifier/procedures.csv", "c.yaml")
    found = problems(variant(tmp_path, text))
    assert any("its version is 'other'" in p for p in found), found
    (tmp_path / "c.yaml").write_text('codes:\n  A06.09.005: КТ ОГК\n', encoding="utf-8")
    assert load(variant(tmp_path, text)).transfer.classifier.codes == {"A06.09.005": "КТ ОГК"}


def test_a_missing_classifier_file_is_named(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8").replace("classifier/procedures.csv", "nowhere.csv")
    found = problems(variant(tmp_path, text))
    assert any("nowhere.csv: file not found" in p for p in found), found


def test_two_hospitals_with_one_issuer_are_refused(tmp_path):
    text = EXAMPLE.read_text(encoding="utf-8").replace("classifier/procedures.csv",
                                                       str(EXAMPLE.parent / "classifier" / "procedures.csv"))
    text = text.replace("    patient_id_issuer: 42-ONCO\n", "    patient_id_issuer: 42-GKB3\n")
    found = problems(variant(tmp_path, text))
    assert any("patient_id_issuer" in p and "42-GKB3" in p and "onco" in p for p in found), found


def test_an_unknown_rule_name_is_refused():
    text = EXAMPLE.read_text(encoding="utf-8").replace("    original_quality: true", "    colour: true")
    with pytest.raises(InventoryError) as err:
        load_text(text, str(EXAMPLE), EXAMPLE.parent)
    assert any("transfer.rules" in p.path for p in err.value.problems)
