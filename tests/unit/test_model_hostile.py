# SPDX-License-Identifier: AGPL-3.0-or-later
"""Issue 15: nothing an inventory can say breaks the region.

Every value that reaches a rendered file is checked for its form; a value
that is not one (a newline in a name, ``true`` as a port, ``.inf`` as a
bandwidth, ``/etc`` as Orthanc's storage, the whole internet as a hospital)
is refused with a message that names the field and what was expected.
"""
from __future__ import annotations

import json
import random
import unicodedata

import pytest

from kontur.inventory import dotted, dump_rt, load_text, parse_yaml
from kontur.model import RESERVED_NODE_NAMES, STORAGE_ROOTS
from kontur.regiongen import generate_region
from kontur.render import RENDERED_ROOTS, render_region
from kontur.render.system import deb822
from kontur.secrets import SecretStore
from kontur.testing.inventory import edited, one_problem, problems_of


def setting(*loc_value):
    *loc, value = loc_value

    def edit(doc):
        node = doc
        for part in loc[:-1]:
            node = node[part]
        node[loc[-1]] = value
    return edit


# --- 3. the package mirror ----------------------------------------------------

@pytest.mark.parametrize("url, fragment", [
    ("http://mirror.region.invalid/debian\nTrusted: yes", "control character"),
    ("http://mirror.region.invalid/debian\n\nTypes: deb\nURIs: http://evil.invalid/debian", "control character"),
    ("http://mirror.region.invalid/deb ian", "space"),
    ("ftp://mirror.region.invalid/debian", "http or https"),
    ("file:///srv/debian", "http or https"),
    ("mirror.region.invalid/debian", "http or https"),
    ("http:///debian", "host"),
    ("http://mirror.region.invalid", "path"),
    ("http://mirror.region.invalid/", "path"),
    ("http://user:pw@mirror.region.invalid/debian", "credentials"),
    ("http://mirror.region.invalid/debian?x=1", "query"),
    ("http://mirror.region.invalid:99999/debian", "port"),
    ("http://mirror\u3000region.invalid/debian", "space"),
])
def test_package_mirror_must_be_a_plain_url(example_text, url, fragment):
    text = edited(example_text, setting("region", "package_mirror", url))
    one_problem(text, "region.package_mirror", fragment)


@pytest.mark.parametrize("url", ["http://mirror.region.invalid/debian", "https://10.42.0.5:8080/debian/",
                                 "http://deb.debian.org/debian"])
def test_package_mirror_plain_urls_pass(example_text, url):
    region = load_text(edited(example_text, setting("region", "package_mirror", url)))
    assert region.region.package_mirror == url


def test_deb822_refuses_a_value_with_a_newline():
    with pytest.raises(ValueError, match="URIs"):
        deb822([[("Types", "deb"), ("URIs", "http://a.invalid/debian\nTrusted: yes")]])
    with pytest.raises(ValueError):
        deb822([[("Trusted: yes\nTypes", "deb")]])
    assert deb822([[("Types", "deb")], [("Types", "deb-src")]]) == "Types: deb\n\nTypes: deb-src\n"


# --- 3. names and patterns: fullmatch, ASCII ----------------------------------

def test_node_name_with_a_trailing_newline_is_refused(example_text):
    def edit(doc):
        doc["nodes"]["gkb3-lami\n"] = doc["nodes"].pop("gkb3-lami")
        doc["hospitals"]["gkb3"]["node"] = "gkb3-lami\n"
    text = edited(example_text, edit)
    one_problem(text, "nodes", "not a valid host name")


@pytest.mark.parametrize("loc, value, fragment", [
    (("hospitals", "onco", "node"), "onco-lami\n", "not a valid host name"),
    (("region", "name"), "example\n", "not a valid identifier"),
    (("region", "code"), "42\n", "2 or 3 digits"),
    (("region", "code"), "\uff14\uff12", "2 or 3 digits"),   # full-width 42
    (("region", "code"), "\u0664\u0662", "2 or 3 digits"),   # Arabic-Indic 42
    (("hospitals", "onco", "replication", "windows"), ["20:00-07:00\n"], "transfer window"),
    (("hospitals", "onco", "replication", "windows"), ["\uff12\uff10:00-07:00"], "transfer window"),
    (("hospitals", "onco", "patient_id_issuer"), "42-ONCO\n", "Issuer of Patient ID"),
    (("hospitals", "onco", "patient_id_issuer"), "42-ONCO\x7f", "Issuer of Patient ID"),
    (("transfer", "physician_code"), ["PerformingPhysicianIdentificationSequence\n"], "DICOM keyword path"),
])
def test_values_with_trailing_newlines_or_foreign_digits(example_text, loc, value, fragment):
    text = edited(example_text, setting(*loc, value))
    one_problem(text, dotted(loc), fragment)


@pytest.mark.parametrize("loc", [
    ("region", "title"),
    ("centre", "title"),
    ("centre", "staff", 0, "name"),
    ("centre", "staff", 0, "mobile_phone"),
    ("nodes", "tsami", "title"),
    ("hospitals", "onco", "title"),
    ("hospitals", "onco", "staff", 0, "position"),
    ("hospitals", "onco", "mis", "facility"),
    ("hospitals", "onco", "modalities", 0, "vendor"),
    ("hospitals", "onco", "modalities", 0, "model"),
])
@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x00", "\x1b[31m", "\x7f", "\u2028"])
def test_free_text_refuses_control_characters(example_text, loc, bad):
    doc = parse_yaml(example_text, "t")
    node = doc
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = f"Some{bad}text"
    found = problems_of(dump_rt(doc))
    assert any(dotted(loc) in p and "control character" in p for p in found), found


@pytest.mark.parametrize("bad", ["\x85", "\x9b", "\u2029", "\x7f"])
def test_c1_controls_and_separators_are_refused_too(example_text, bad):
    """YAML folds some of these away; a model built from other data (the lab) is checked as well."""
    data = load_text(example_text).model_dump(mode="json")
    data["hospitals"]["onco"]["title"] = f"Onco{bad}logy"
    from pydantic import ValidationError
    from kontur.model import Region
    with pytest.raises(ValidationError, match="control character"):
        Region.model_validate(data)


def test_station_names_refuse_control_characters(example_text):
    text = edited(example_text, setting("hospitals", "onco", "modalities", 0, "station_names", ["CT1\nX"]))
    one_problem(text, "hospitals.onco.modalities[0].station_names", "control character")


def test_cyrillic_text_still_passes(example_text):
    region = load_text(example_text)
    assert "Пример" in region.region.title


# --- 4. storage_dir -------------------------------------------------------------

@pytest.mark.parametrize("path, fragment", [
    ("/", "under"),
    ("/etc", "under"),
    ("/root/.ssh", "under"),
    ("/etc/kontur/tls", "under"),
    ("/var/lib/orthanc", "under"),
    ("/srv", "under"),
    ("/var/lib/kontur", "under"),
    ("/var/lib/orthanc/../../../etc", "normal"),
    ("/srv//orthanc", "normal"),
    ("/srv/orthanc/", "normal"),
    ("/srv/./orthanc", "normal"),
    ("srv/orthanc", "absolute"),
    ("/srv/orthanc\n", "control character"),
    ("/srv/orth anc", "letters"),
    ("/srv/orthanc;rm", "letters"),
    ("/var/lib/orthanc-evil/db", "under"),
])
def test_storage_dir_outside_the_storage_roots(example_text, path, fragment):
    text = edited(example_text, setting("nodes", "tsami", "storage_dir", path))
    one_problem(text, "nodes.tsami.storage_dir", fragment)


@pytest.mark.parametrize("path", ["/var/lib/orthanc/db", "/srv/orthanc", "/srv/orthanc/storage-2"])
def test_storage_dir_inside_the_roots_passes(example_text, path):
    region = load_text(edited(example_text, setting("nodes", "tsami", "storage_dir", path)))
    assert region.nodes["tsami"].storage_dir == path
    assert any(path.startswith(r + "/") for r in STORAGE_ROOTS)


# --- 7. network scope ------------------------------------------------------------

def test_hospital_network_outside_the_secure_network(example_text):
    def edit(doc):
        doc["hospitals"]["onco"]["network"] = "0.0.0.0/0"
    one_problem(edited(example_text, edit), "hospitals.onco.network", "the whole internet")

    def edit2(doc):
        doc["hospitals"]["onco"]["network"] = "192.168.0.0/16"
        doc["nodes"]["onco-lami"]["address"] = "10.42.1.10"
    one_problem(edited(example_text, edit2), "hospitals.onco.network", "inside the region's secure network")


@pytest.mark.parametrize("net, fragment", [
    ("0.0.0.0/0", "the whole internet"),
    ("0.0.0.0/1", "wider than /8"),
    ("10.0.0.0/7", "wider than /8"),
])
def test_admin_networks_are_bounded(example_text, net, fragment):
    text = edited(example_text, setting("region", "admin_networks", [net]))
    one_problem(text, "region.admin_networks", fragment)


def test_secure_network_is_bounded(example_text):
    text = edited(example_text, setting("region", "secure_network", "0.0.0.0/0"))
    one_problem(text, "region.secure_network", "the whole internet")


def test_a_slash_8_admin_network_passes(example_text):
    region = load_text(edited(example_text, setting("region", "admin_networks", ["10.0.0.0/8"])))
    assert region.region.admin_networks == ["10.0.0.0/8"]


def test_the_lab_still_validates(example_text):
    region = load_text(example_text)
    mapping = {a: f"198.18.0.{i + 2}" for i, a in enumerate(region.all_addresses())}
    lab = region.with_addresses(mapping, network="198.18.0.0/24", admin_networks=["198.18.0.1/32"])
    from kontur.rules import check_region
    assert check_region(lab) == []


# --- 8. values that are not values -----------------------------------------------

@pytest.mark.parametrize("loc, value, fragment", [
    (("defaults", "ports", "dicom"), True, "valid integer"),
    (("hospitals", "onco", "modalities", 0, "port"), True, "valid integer"),
    (("hospitals", "onco", "modalities", 0, "port"), 104.0, "valid integer"),
    (("hospitals", "onco", "modalities", 0, "port"), "104", "valid integer"),
    (("nodes", "tsami", "ports"), {"https": False}, "valid integer"),
    (("defaults", "stable_age"), True, "valid integer"),
    (("defaults", "disk", "warning_percent"), 75.0, "valid integer"),
    (("hospitals", "onco", "modalities", 0, "studies_per_day"), True, "valid integer"),
    (("hospitals", "onco", "replication", "deadline_hours"), "24", "valid integer"),
    (("hospitals", "onco", "type"), True, "hospital type"),
    (("hospitals", "onco", "type"), "1", "hospital type"),
    (("kontur",), True, "schema version"),
    (("hospitals", "onco", "replication", "bandwidth_mbit"), float("inf"), "finite"),
    (("hospitals", "onco", "replication", "bandwidth_mbit"), float("nan"), "finite"),
    (("hospitals", "onco", "replication", "bandwidth_mbit"), 1e-300, "greater than or equal to 0.1"),
    (("hospitals", "onco", "replication", "bandwidth_mbit"), 1e9, "less than or equal to 100000"),
    (("hospitals", "onco", "replication", "bandwidth_mbit"), True, "valid number"),
    (("hospitals", "onco", "replication", "bandwidth_mbit"), "50", "valid number"),
    (("hospitals", "onco", "modalities", 0, "legacy_folder"), "yes", "valid boolean"),
    (("hospitals", "onco", "modalities", 0, "legacy_folder"), 1, "valid boolean"),
])
def test_values_that_are_not_values(example_text, loc, value, fragment):
    text = edited(example_text, setting(*loc, value))
    one_problem(text, dotted(loc), fragment)


def test_yaml_numbers_still_work(example_text):
    def edit(doc):
        doc["hospitals"]["onco"]["replication"]["bandwidth_mbit"] = 0.5
        doc["hospitals"]["onco"]["modalities"][0]["port"] = 11112
    region = load_text(edited(example_text, edit))
    assert region.hospitals["onco"].replication.bandwidth_mbit == 0.5
    assert region.hospitals["onco"].modalities[0].port == 11112
    # an integer bandwidth is a number too
    region = load_text(edited(example_text, setting("hospitals", "onco", "replication", "bandwidth_mbit", 50)))
    assert region.hospitals["onco"].replication.bandwidth_mbit == 50


def test_yaml_inf_from_the_text_is_refused(example_text):
    doc = parse_yaml(example_text, "t")
    doc["hospitals"]["onco"]["replication"]["bandwidth_mbit"] = 1
    text = dump_rt(doc).replace("bandwidth_mbit: 1\n", "bandwidth_mbit: .inf\n", 1)
    assert "bandwidth_mbit: .inf" in text
    one_problem(text, "hospitals.onco.replication.bandwidth_mbit", "finite")


# --- 1. reserved node names --------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RESERVED_NODE_NAMES) + ["kontur-checks"])
def test_reserved_node_names(example_text, name):
    def edit(doc):
        doc["nodes"][name] = doc["nodes"].pop("research")
    one_problem(edited(example_text, edit), f"nodes.{name}", "reserved")


def test_reserved_names_cover_the_stores_files():
    assert {"ca", "kontur-operator", "users"} <= RESERVED_NODE_NAMES


# --- property: random valid regions render into safe files --------------------------

_TEMPLATE_CONTROLS = {"\n"}   # what the renderer writes itself: line ends (no tabs, no CR)


def _text_is_clean(path: str, content: bytes) -> None:
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return  # not text (none today)
    bad = {c for c in text if unicodedata.category(c) == "Cc" and c not in _TEMPLATE_CONTROLS} | \
        {c for c in text if c in "\u2028\u2029"}
    assert not bad, f"{path} contains control characters {sorted(map(repr, bad))}"


def _hostile_text(rnd: random.Random) -> str:
    """Text with what a hostile or careless inventory might contain, minus controls."""
    alphabet = ("abcXYZ019 -_.,:;'\"\\/{}[]()<>$`|&#%*!?=+@~^"
                "АБВгдеЁё№«»—–…\u00a0\u3000\uff14\u0664\u200b\u202e\U0001f600")
    return "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 40))).strip() or "x"


#: what a hostile inventory slips in, and the field it lands in
_HOSTILE = [
    (("region", "title"), "Region\nTrusted: yes"),
    (("centre", "title"), "Centre\x1b[2J"),
    (("region", "package_mirror"), "http://mirror.invalid/debian\nTrusted: yes"),
    (("region", "package_mirror"), "http://mirror.invalid/debian\n\nTypes: deb\nURIs: http://evil.invalid/debian"),
    (("hospitals", "mo01", "title"), "Hospital\r\n"),
    (("hospitals", "mo01", "staff", 0, "name"), "Engineer\x00"),
    (("hospitals", "mo01", "modalities", 0, "vendor"), "Vendor\x7f"),
    (("hospitals", "mo01", "modalities", 0, "station_names"), ["CT\nX"]),
    (("hospitals", "mo01", "replication", "windows"), ["21:00-06:00\n"]),
    (("hospitals", "mo01", "replication", "bandwidth_mbit"), float("inf")),
    (("hospitals", "mo01", "replication", "bandwidth_mbit"), 1e-300),
    (("hospitals", "mo01", "network"), "0.0.0.0/0"),
    (("region", "admin_networks"), ["0.0.0.0/0"]),
    (("nodes", "central", "storage_dir"), "/etc/kontur/tls"),
    (("nodes", "central", "storage_dir"), "/"),
    (("nodes", "central", "title"), "Central\u2028archive"),
    (("defaults", "ports", "dicom"), True),
]


def _random_doc(seed: int):
    rnd = random.Random(seed)
    text = generate_region(rnd.randint(1, 5), gateways=rnd.randint(0, 3), seed=seed,
                           dicom_port=rnd.choice([104, 4242, 11112]), https_port=rnd.choice([443, 8443]),
                           second_octet=rnd.randint(1, 250))
    doc = parse_yaml(text, "gen")
    doc["region"]["title"] = _hostile_text(rnd)
    doc["centre"]["title"] = _hostile_text(rnd)
    doc["region"]["package_mirror"] = rnd.choice(
        ["http://mirror.invalid/debian", "https://10.1.2.3:8443/deb/ian/", "http://deb.debian.org/debian"])
    for key, h in doc["hospitals"].items():
        h["title"] = _hostile_text(rnd)
        for p in h.get("staff", []):
            p["name"] = _hostile_text(rnd)
            p["position"] = _hostile_text(rnd)
        for m in h.get("modalities", []):
            m["vendor"] = _hostile_text(rnd)
            m["station_names"] = [_hostile_text(rnd)]
        if h.get("mis"):
            h["mis"]["facility"] = f"F{key}{rnd.randint(0, 9)}"
    for name, n in doc["nodes"].items():
        n["title"] = _hostile_text(rnd)
        if rnd.random() < 0.5:
            n["storage_dir"] = rnd.choice(["/srv/orthanc", "/var/lib/orthanc/db", "/srv/pacs/db-1"])
    return doc, rnd


@pytest.mark.parametrize("seed", range(20))
def test_random_regions_render_only_safe_files(tmp_path, seed):
    doc, rnd = _random_doc(seed)
    region = load_text(dump_rt(doc), f"seed {seed}")
    store = SecretStore(tmp_path / "s")
    for bundle in render_region(region, store):
        for f in bundle.files:
            assert any(f.path == root or f.path.startswith(root + "/") for root in RENDERED_ROOTS), \
                f"{bundle.node}: {f.path} outside the rendered roots"
            assert f.path == f.path.strip() and "/../" not in f.path and "//" not in f.path
            _text_is_clean(f"{bundle.node}:{f.path}", f.content)
            if f.path.endswith(".json"):
                json.loads(f.content, parse_constant=lambda c: pytest.fail(f"{f.path}: non-JSON {c}"))
        for d in bundle.directories:
            assert any(d.path == root or d.path.startswith(root + "/") for root in RENDERED_ROOTS), \
                f"{bundle.node}: directory {d.path} outside the rendered roots"
        storage = region.nodes[bundle.node].storage_dir
        assert any(storage.startswith(r + "/") for r in STORAGE_ROOTS)
    # the same region with one hostile value is refused, naming the field
    loc, value = rnd.choice(_HOSTILE)
    setting(*loc, value)(doc)
    found = problems_of(dump_rt(doc))
    assert any(p.split(": ", 1)[1].startswith(dotted(loc)) for p in found), (loc, found)


@pytest.mark.parametrize("loc, value", _HOSTILE)
def test_every_hostile_value_is_refused_by_name(loc, value):
    doc, _rnd = _random_doc(0)
    setting(*loc, value)(doc)
    found = problems_of(dump_rt(doc))
    assert any(p.split(": ", 1)[1].startswith(dotted(loc)) for p in found), (loc, found)
