# SPDX-License-Identifier: AGPL-3.0-or-later
"""The on-call judgement (kontur/health.py): a healthy node's answers are
green; each fault of issue 13 turns its row yellow or red with a message
naming what is wrong and, on red, whom to call; JSON, node_exporter's
textfile format and the exit codes follow."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from kontur import health
from kontur.inventory import load
from kontur.render import render_node
from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"
NOW = 1_800_000_000.0
DAY = 86400


@pytest.fixture(scope="module")
def region():
    return load(SMALL)


@pytest.fixture(scope="module")
def bundles(region, tmp_path_factory):
    store = SecretStore(tmp_path_factory.mktemp("secrets"))
    return {n: render_node(region, n, store) for n in region.nodes}


def healthy(region, bundles, node: str) -> dict:
    """What a node's probe answers when all is well."""
    params = health.probe_params(region, node, bundles[node])
    answer = {"now": NOW, "units": {u: "active" for u in params["units"]},
              "disk": {k: {"path": v, "used_percent": 41.0, "free_bytes": 10**10}
                       for k, v in params["disk"].items() if v},
              "certificates": {p: {"not_after": NOW + 300 * DAY, "subject": "CN=x"} for p in params["certificates"]}}
    if params["archive"]:
        keys = health.expected_modalities(bundles[node])
        answer["orthanc"] = {
            "rest": {"status": 200, "aet": region.nodes[node].aet}, "default_credentials": 401, "no_credentials": 401,
            "modalities": keys, "echo_peers": {k: True for k in keys},
            "seen": {"since": NOW - 30 * DAY,
                     "devices": {m.aet: {"at": NOW - 600, "study": "s"} for _, m in region.dicom_senders(node)}},
            "replication": ({"enabled": True, "link": {"up": True, "failures": 0}, "deadline_hours": 24,
                             "queue_depth": 0, "overdue": 0, "oldest_pending_age_seconds": None, "parked": 0,
                             "alarms": [], "transfer": {"mode": "enforce", "quarantined": 0, "released": 0}}
                            if region.nodes[node].upstream else {"enabled": False, "reason": "no upstream"})}
        answer["echo"] = {"ok": True, "answered": True, "detail": ""}
        answer["tls_without_certificate"] = {"status": 400}
    return answer


def judge(region, bundles, node, answer, **kw):
    return health.judge(region, node, bundles[node], answer, **kw)


def test_a_healthy_region_is_green_and_exits_0(region, bundles):
    results = [judge(region, bundles, n, healthy(region, bundles, n)) for n in region.nodes]
    assert [r.level for r in results] == ["green"] * len(region.nodes), [r.findings for r in results]
    assert health.exit_code(results) == 0 and health.exit_code(results, strict=True) == 0
    assert all(row["call"] == "" for row in health.rows(results))


def mutate(region, bundles, node, change):
    answer = copy.deepcopy(healthy(region, bundles, node))
    change(answer)
    return judge(region, bundles, node, answer)


@pytest.mark.parametrize("node,change,level,words", [
    ("city-lami", lambda a: a["units"].update({"orthanc.service": "inactive"}), "red", "orthanc.service is inactive"),
    ("city-lami", lambda a: a["orthanc"]["replication"]["link"].update(up=False, failures=4, last_error="timed out"),
     "red", "the link to tsami is down"),
    ("city-lami", lambda a: a["orthanc"].update(modalities=[m for m in a["orthanc"]["modalities"] if m != "city-ct1"]),
     "red", "city-ct1 is in the inventory but missing from Orthanc's configuration"),
    ("tsami", lambda a: a["orthanc"].update(default_credentials=200), "red", "REST authenticates orthanc:orthanc"),
    ("city-lami", lambda a: a["orthanc"]["replication"].update(overdue=1, queue_depth=1,
                                                               oldest_pending_age_seconds=26 * 3600),
     "red", "1 study undelivered past the 24 h deadline (oldest waiting 26.0 h)"),
    ("tsami", lambda a: a["tls_without_certificate"].update(status=200), "red",
     "HTTPS without a client certificate answered 200"),
    ("rural-gw", lambda a: a["certificates"]["/etc/kontur/tls/node.crt"].update(not_after=NOW + 10 * DAY + 60),
     "red", "certificate /etc/kontur/tls/node.crt expires in 10 day(s)"),
    ("rural-gw", lambda a: a["certificates"]["/etc/kontur/tls/node.crt"].update(not_after=NOW + 20 * DAY + 60),
     "yellow", "expires in 20 day(s)"),
    ("tsami", lambda a: a["certificates"]["/etc/kontur/tls/crl.pem"].update(not_after=NOW + 5 * DAY + 60),
     "red", "revocation list /etc/kontur/tls/crl.pem expires in 5 day(s); nginx refuses every client certificate"),
    ("rural-gw", lambda a: a["disk"]["storage"].update(used_percent=96.0), "red",
     "storage (/var/lib/orthanc/db) is 96% full: over the critical threshold 90%"),
    ("rural-gw", lambda a: a["disk"]["storage"].update(used_percent=85.0), "yellow", "over the warning threshold 80%"),
    ("city-lami", lambda a: a["echo"].update(ok=False, answered=False, detail="Connection refused"), "red",
     "C-ECHO to CITY_LAMI on port 4242 failed: Connection refused"),
    ("city-lami", lambda a: a["orthanc"]["seen"]["devices"]["CITY_CT1"].update(at=NOW - 20 * 3600), "yellow",
     "CITY_CT1 (CT, ~30/day) silent: last study 20 h ago; its usual rhythm allows 12 h"),
    ("city-lami", lambda a: a["orthanc"]["replication"].update(parked=2), "yellow", "2 studies parked"),
    ("city-lami", lambda a: a["orthanc"]["replication"]["transfer"].update(quarantined=1), "yellow",
     "1 study in quarantine"),
    ("city-lami", lambda a: a["orthanc"]["replication"]["transfer"].update(quarantined=3, released=1), "yellow",
     "2 studies in quarantine"),
])
def test_each_fault_is_caught_and_named(region, bundles, node, change, level, words):
    r = mutate(region, bundles, node, change)
    assert r.level == level, r.findings
    assert any(words in f.message for f in r.findings), [f.message for f in r.findings]
    red_rows = [row for row in health.rows([r]) if row["level"] == "red"]
    if level == "red":
        staff = r.responsible[0]
        assert red_rows and all(staff.name in row["call"] and staff.mobile_phone in row["call"] for row in red_rows)
        assert health.exit_code([r]) == 1
    else:
        assert not red_rows and health.exit_code([r]) == 0 and health.exit_code([r], strict=True) == 1


def test_under_warn_a_failing_study_is_not_held_so_not_a_quarantine_warning(region, bundles):
    r = mutate(region, bundles, "city-lami",
               lambda a: a["orthanc"]["replication"]["transfer"].update(mode="warn", quarantined=4))
    assert r.level == "green", r.findings


def test_an_unreachable_node_is_red_with_the_centres_staff_for_the_tsami(region, bundles):
    r = judge(region, bundles, "tsami", None, ssh_error="no answer within 5 s")
    assert r.level == "red" and r.findings[0].message == "unreachable over SSH: no answer within 5 s"
    assert [p.name for p in r.responsible] == [p.name for p in region.centre.staff]
    lami = judge(region, bundles, "city-lami", None, ssh_error="Connection refused")
    assert [p.name for p in lami.responsible] == [p.name for p in region.hospitals["city"].staff]


def test_a_device_that_never_sent_is_silent_since_recording_began_and_one_without_rhythm_never(region, bundles):
    def never(a):
        a["orthanc"]["seen"]["devices"].pop("CITY_DX1")
    r = mutate(region, bundles, "city-lami", never)
    assert any("CITY_DX1" in f.message and "no study in the 720 h since recording began" in f.message
               for f in r.findings), r.findings
    assert health.silence_limit_hours(0) is None
    assert health.silence_limit_hours(1) == 72.0 and health.silence_limit_hours(500) == 12.0


def test_json_and_the_textfile_collector_format(region, bundles):
    results = [judge(region, bundles, n, healthy(region, bundles, n)) for n in region.nodes]
    results[0] = judge(region, bundles, "tsami", None, ssh_error="down")
    doc = health.as_json(region, results, NOW)
    assert doc["level"] == "red" and doc["nodes"]["tsami"]["findings"][0]["level"] == "red"
    assert doc["nodes"]["tsami"]["responsible"][0]["mobile_phone"]
    text = health.prometheus(results)
    sample = re.compile(r'^[a-z_]+\{([a-z_]+="[^"\\]*(\\.[^"\\]*)*",?)*\} -?[0-9.]+$')
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif not line.startswith("# HELP "):
            assert sample.match(line), line
            assert line.split("{")[0] in names, f"{line}: no TYPE before it"
    assert 'kontur_check_level{node="tsami",role="tsami"} 2' in text
    assert 'kontur_check_reachable{node="tsami"} 0' in text
    assert 'kontur_check_certificate_days_left{node="city-lami",file="/etc/kontur/tls/node.crt"} 300' in text


def test_the_probe_reads_a_revocation_lists_next_update_as_a_certificates_end(tmp_path):
    """The probe (as it runs on a node) on a real CRL and certificate from the store."""
    import datetime as dt
    import importlib.util

    from cryptography import x509

    from kontur import revocation
    from kontur.pki import ensure_ca
    from kontur.secrets import SecretStore

    spec = importlib.util.spec_from_file_location("health_probe", REPO / "kontur" / "scripts" / "health_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    ca = ensure_ca(SecretStore(tmp_path / "s"), "test")
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "crl.pem").write_bytes(revocation.crl_pem(SecretStore(tmp_path / "s"), ca.cert_pem, ca.key_pem))
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    got = probe.certificates([str(tls / "crl.pem"), str(tls / "ca.crt")])
    crl = x509.load_pem_x509_crl((tls / "crl.pem").read_bytes())
    assert got[str(tls / "crl.pem")]["not_after"] == round(crl.next_update_utc.timestamp())
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert got[str(tls / "ca.crt")]["not_after"] == round(cert.not_valid_after_utc.timestamp())
    assert crl.next_update_utc > dt.datetime.now(dt.timezone.utc)
