# SPDX-License-Identifier: AGPL-3.0-or-later
"""Issue 16 on the control side: the inventory's research feeds, what
validation refuses (``line N:`` messages naming the field), and the research
section of the exporting node's policy file."""
from __future__ import annotations

from pathlib import Path

import pytest

from kontur.inventory import InventoryError, load
from kontur.policy import build_policy, check_policy, research_section

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"
FEED = """    onco-ct:
      destination: research
      select:
        hospitals: [onco]
        modalities: [CT]
      profile:
        # PS3.15 Annex E options beyond the Basic profile
        options: [retain_modified_dates, clean_descriptors]
"""


def variant(tmp_path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "file: classifier/procedures.csv", f"file: {EXAMPLE.parent / 'classifier' / 'procedures.csv'}")
    assert old in text
    p = tmp_path / "region.yaml"
    p.write_text(text.replace(old, new, 1), encoding="utf-8")
    return p


def problems(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as err:
        load(path)
    return [f"{p.path}: {p.message}" for p in err.value.problems]


def test_the_example_feeds_onco_ct_from_the_tsami_into_its_research_node():
    region = load(EXAMPLE)
    assert set(region.research.feeds) == {"onco-ct"}
    assert set(region.research_feeds_at("tsami")) == {"onco-ct"} and not region.research_feeds_at("onco-lami")
    sec = research_section(region, "tsami")
    assert sec["feeds"]["onco-ct"]["select"] == {"hospitals": ["onco"], "modalities": ["CT"]}
    assert sec["hospitals"]["42-ONCO"] == "onco" and sec["link_issuers"] == ["ENP"]
    doc = build_policy(region, "tsami", None)
    assert doc["research"] == sec
    check_policy(doc)                                     # the plugin's own parser accepts it
    assert "research" not in build_policy(region, "research", None)   # the research node exports nothing
    # no secret in the policy: the key and the endpoints' credentials are rendered apart
    assert "key" not in str(sec).lower() and "password" not in str(sec).lower()


@pytest.mark.parametrize("old,new,where,word", [
    ("options: [retain_modified_dates, clean_descriptors]", "options: [retain_modified_dates, clean_pixels]",
     "research.feeds.onco-ct.profile", "'clean_pixels' is not a PS3.15 option kontur knows"),
    ("      select:\n        hospitals: [onco]\n        modalities: [CT]\n", "      select: {}\n",
     "research.feeds.onco-ct.select", "selects nothing"),
    ("destination: research", "destination: tsami", "research.feeds.onco-ct.destination",
     "'tsami' is not a research node; expected one of: research"),
    ("hospitals: [onco]\n        modalities", "hospitals: [oncology]\n        modalities",
     "research.feeds.onco-ct.select.hospitals[0]", "unknown hospital 'oncology'"),
    ("reidentify_roles: [archivist]", "reidentify_roles: [keeper]", "research.reidentify_roles[0]",
     "unknown role 'keeper'"),
    ("        burned_in: hold", "        burned_in: maybe", "research.feeds.onco-ct.profile.burned_in", "hold"),
    ("        hospitals: [onco]\n", "        hospitals: [onco]\n        since: 2026-01-01\n",
     "research.feeds.onco-ct.select.since", "string"),
    ("        modalities: [CT]\n", "        modalities: [CT]\n        pathology_only: often\n",
     "research.feeds.onco-ct.select.pathology_only", "boolean"),
])
def test_a_bad_feed_is_refused_naming_the_field_and_what_was_expected(tmp_path, old, new, where, word):
    found = problems(variant(tmp_path, old, new))
    assert any(where in p and word in p for p in found), found


def test_a_feed_exported_at_a_gateway_is_refused(tmp_path):
    found = problems(variant(tmp_path, "      destination: research\n",
                             "      destination: research\n      at: crb-gw\n"))
    assert any("research.feeds.onco-ct.at" in p and "not the TsAMI or a LAMI" in p for p in found), found


def test_the_tsami_gets_the_exporter_and_the_research_node_only_a_store_only_account(tmp_path):
    import json

    from kontur.render import render_node
    from kontur.secrets import SecretStore
    region = load(EXAMPLE)
    store = SecretStore(tmp_path / "secrets")
    tsami = render_node(region, "tsami", store)
    secrets = tsami.file("/etc/kontur/research.json")
    assert (secrets.mode, secrets.owner, secrets.secret) == ("0600", "orthanc", True)
    doc = json.loads(secrets.content)
    assert doc["archive"]["url"].startswith("http://127.0.0.1:") and len(doc["key"]) >= 32
    assert doc["key"] == store.password("research/key", 32)
    assert "kontur-research.timer" in tsami.services
    unit = tsami.file("/etc/systemd/system/kontur-research.service").text
    assert "User=orthanc" in unit and "kontur_plugins.research run" in unit and doc["key"] not in unit
    peers = json.loads(tsami.file("/etc/orthanc/credentials.json").content)["OrthancPeers"]
    assert peers["research"]["Url"].startswith(f"https://{region.nodes['research'].address}:")

    research = render_node(region, "research", store)
    assert not [f.path for f in research.files if "research.json" in f.path or "kontur-research" in f.path]
    assert not any(doc["key"].encode() in f.content for f in research.files)
    config = json.dumps(json.loads(research.file("/etc/orthanc/orthanc.json").content), sort_keys=True)
    assert '"peer-tsami": {"admin": false, "delete": false, "download": false, "upload": true, "view": false}' \
        in config
    # a LAMI exports nothing
    assert "kontur-research.timer" not in render_node(region, "onco-lami", store).services


def test_a_pathology_only_feed_reaches_the_exporters_policy(tmp_path):
    region = load(variant(tmp_path, "        modalities: [CT]\n", "        modalities: [CT]\n        pathology_only: true\n"))
    doc = build_policy(region, "tsami", None)
    assert doc["research"]["feeds"]["onco-ct"]["select"] == {"hospitals": ["onco"], "modalities": ["CT"],
                                                            "pathology_only": True}
    check_policy(doc)
