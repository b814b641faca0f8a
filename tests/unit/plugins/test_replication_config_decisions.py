"""The policy file's validation and the policy's decisions."""
from __future__ import annotations

import copy
import json

import pytest

from kontur_plugins.replication import decisions
from kontur_plugins.replication.config import (
    DEFAULT_POLICY_FILE,
    TUNING_DEFAULTS,
    PolicyError,
    load_policy,
    parse_policy,
    policy_path_from_orthanc,
)

GOOD = {
    "schema": 1, "node": "onco-lami", "role": "lami", "hospital": "onco", "timezone": "Asia/Novokuznetsk",
    "state_dir": "/var/lib/kontur",
    "replication": {
        "enabled": True, "mode": "all", "gateway": False, "windows": ["20:00-07:00"], "bandwidth_mbit": 50,
        "deadline_hours": 24, "retention_days": None,
        "upstream": {"name": "tsami", "aet": "KZ_TSAMI", "url": "https://10.42.0.10:443/", "username": "peer-onco-lami",
                     "password": "pw", "ca_file": "/etc/kontur/tls/ca.crt", "cert_file": "/etc/kontur/tls/node.crt",
                     "key_file": "/etc/kontur/tls/node.key"},
        "tuning": {"retry_max_seconds": 60},
    },
}


def test_a_good_policy():
    cfg = parse_policy(GOOD)
    assert cfg.enabled and cfg.mode == "all" and cfg.windows == ("20:00-07:00",)
    assert cfg.cap_bytes_per_second == 50_000_000 / 8
    assert cfg.upstream.tls and cfg.upstream.public()["client_certificate"]
    assert "password" not in cfg.upstream.public()
    assert cfg.t("retry_max_seconds") == 60 and cfg.t("retry_base_seconds") == TUNING_DEFAULTS["retry_base_seconds"]
    assert cfg.state_db == "/var/lib/kontur/replication.sqlite3"


def test_every_problem_is_reported_at_once():
    bad = copy.deepcopy(GOOD)
    bad["timezone"] = "Mars/Olympus"
    r = bad["replication"]
    r["mode"] = "sometimes"
    r["windows"] = ["25:00-07:00", "8-9"]
    r["bandwidth_mbit"] = -1
    r["upstream"]["url"] = "ftp://x"
    r["tuning"] = {"bogus": 1, "retry_factor": 0.5, "link_probe_seconds": 0}
    with pytest.raises(PolicyError) as exc:
        parse_policy(bad)
    text = "\n".join(exc.value.problems)
    for needle in ("Mars/Olympus", "sometimes", "25:00-07:00", "'8-9'", "bandwidth_mbit", "ftp://x",
                   "bogus", "retry_factor", "link_probe_seconds"):
        assert needle in text, needle


def test_gateway_needs_a_retention_and_cert_needs_key():
    bad = copy.deepcopy(GOOD)
    bad["replication"]["gateway"] = True
    bad["replication"]["upstream"]["key_file"] = None
    with pytest.raises(PolicyError) as exc:
        parse_policy(bad)
    assert any("retention" in p for p in exc.value.problems)
    assert any("cert_file and key_file" in p for p in exc.value.problems)


def test_disabled_policy():
    cfg = parse_policy({"schema": 1, "node": "tsami", "role": "tsami", "hospital": None, "timezone": "UTC",
                        "state_dir": "/var/lib/kontur",
                        "replication": {"enabled": False, "reason": "a tsami node does not replicate"}})
    assert not cfg.enabled and "tsami" in cfg.reason


def test_load_policy_errors(tmp_path):
    with pytest.raises(PolicyError, match="not found"):
        load_policy(str(tmp_path / "none.json"))
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(PolicyError, match="JSON"):
        load_policy(str(p))
    p.write_text(json.dumps(GOOD))
    assert load_policy(str(p)).node == "onco-lami"


def test_policy_path_from_orthanc_configuration():
    assert policy_path_from_orthanc({"Kontur": {"PolicyFile": "/x.json"}}) == "/x.json"
    assert policy_path_from_orthanc({}) == DEFAULT_POLICY_FILE
    assert policy_path_from_orthanc({"Kontur": "nonsense"}) == DEFAULT_POLICY_FILE


@pytest.mark.parametrize("mode,gateway,selected,flagged,send", [
    ("all", False, False, False, True),
    ("pathology", False, False, False, False),
    ("pathology", False, False, True, True),
    ("on-demand", False, False, True, False),
    ("on-demand", False, True, False, True),      # pushed once: late instances follow
    ("pathology", False, True, False, True),
    ("on-demand", True, False, False, True),      # a gateway forwards everything
])
def test_on_ready(mode, gateway, selected, flagged, send):
    d = decisions.on_ready(mode, gateway, selected, flagged)
    assert d.send is send and d.reason


def test_on_flag_and_full_pass():
    assert decisions.on_flag("pathology", False, ready=True).send
    assert not decisions.on_flag("pathology", False, ready=False).send
    assert not decisions.on_flag("on-demand", False, ready=True).send
    assert decisions.in_full_pass("all", False, False, False)
    assert decisions.in_full_pass("pathology", False, False, True)
    assert not decisions.in_full_pass("pathology", False, False, False)
    assert not decisions.in_full_pass("on-demand", False, False, False)
    assert decisions.in_full_pass("on-demand", False, True, False)
    assert decisions.in_full_pass("on-demand", True, False, False)
