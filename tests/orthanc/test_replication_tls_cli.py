"""Mutual TLS to the upstream, and the operator's CLI, against real Orthanc.

There is no nginx here: a TLS-terminating proxy on loopback (requiring a
client certificate from the regional CA made by kontur.pki) stands in front
of the TsAMI, as nginx does on a node.
"""
from __future__ import annotations

import json
import ssl

import pytest

from kontur import nodeapi
from kontur.cli import main as kontur_main
from kontur.inventory import load
from kontur.pki import ensure_ca, node_cert, operator_cert
from kontur.secrets import SecretStore
from kontur.testing.dicom import make_study
from kontur.testing.orthanc import wait_for
from kontur.testing.proxy import TcpProxy
from kontur.testing.replication import node_clients, wait_delivered

pytestmark = pytest.mark.orthanc


@pytest.fixture
def pki(tmp_path):
    store = SecretStore(tmp_path / "secrets")
    ensure_ca(store, "Test region")
    node_cert(store, "Test region", "tsami", ["127.0.0.1"])
    node_cert(store, "Test region", "lami", ["127.0.0.1"])
    d = store.pki_dir
    return {"store": store, "ca": str(d / "ca.crt"), "dir": d / "nodes"}


def server_context(pki, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki["ca"])
    ctx.load_cert_chain(str(pki["dir"] / f"{name}.crt"), str(pki["dir"] / f"{name}.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def test_sender_uses_mutual_tls(make_node, tsami, pki):
    with TcpProxy(tsami.http_port, tls=server_context(pki, "tsami")) as proxy:
        tls = {"ca_file": pki["ca"], "cert_file": str(pki["dir"] / "lami.crt"),
               "key_file": str(pki["dir"] / "lami.key")}
        lami = make_node(mode="all", upstream_url=proxy.url, tls=tls)
        study = make_study(3)
        lami.store(study)
        wait_delivered(tsami, study)
        assert proxy.connections >= 1 and proxy.handshake_errors == []
        assert lami.status()["upstream"]["tls"] is True

        # without a client certificate the TsAMI's front refuses the link: queued, error visible
        bare = make_node(mode="all", upstream_url=proxy.url, tls={"ca_file": pki["ca"]})
        other = make_study(1)
        bare.store(other)
        st = wait_for(lambda: (s := bare.status())["failed"] >= 1 and s, 60, message="a TLS failure")
        assert st["queue_depth"] == 1
        assert proxy.handshake_errors
        assert tsami.sop_uids_of_study(other.orthanc_id()) == set()


def _run(capsys, *args) -> tuple[int, str, str]:
    rc = kontur_main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_status_and_replicate_against_a_node(make_node, tsami, monkeypatch, capsys):
    region = load()
    lami = make_node(mode="on-demand")
    node_clients(monkeypatch, {"onco-lami": lami})
    study = make_study(2)
    lami.store(study)
    lami.wait_processed(study)

    rc, out, err = _run(capsys, "replication", "status")
    assert rc == 1                                 # four nodes are unreachable
    assert "onco-lami" in out and "on-demand" in out and "unreachable" in err
    rc, out, _ = _run(capsys, "replication", "status", "--json")
    rows = {r["node"]: r for r in json.loads(out)}
    assert set(rows) == {"onco-lami", "gkb3-lami", "perinatal-lami", "crb-gw", "mammo-gw"}
    assert rows["onco-lami"]["reachable"] and rows["onco-lami"]["status"]["policy"] == "on-demand"
    assert not rows["crb-gw"]["reachable"] and rows["crb-gw"]["problems"]

    rc, out, err = _run(capsys, "replicate", "--study", study.study_uid, "--node", "onco-lami", "--urgent")
    assert rc == 0, err
    assert study.orthanc_id() in out
    wait_delivered(tsami, study)

    rc, out, err = _run(capsys, "replicate", "--study", "1.2.3.4.5.6.7", "--node", "onco-lami")
    assert rc == 1 and "not held" in err
    rc, _, err = _run(capsys, "replicate", "--patient", study.patient_id, "--node", "tsami")
    assert rc == 2 and "only LAMI and gateway" in err
    rc, _, err = _run(capsys, "replicate", "--study", study.study_uid, "--node", "nowhere")
    assert rc == 2 and "not in the inventory" in err

    # a region whose only replicating node is healthy: exit 0
    monkeypatch.setattr("kontur.replication_cli.replicating_nodes", lambda region_: ["onco-lami"])
    rc, out, err = _run(capsys, "replication", "status")
    assert rc == 0, err
    assert "onco-lami" in out


def test_nodeapi_client_speaks_mutual_tls(make_node, pki):
    lami = make_node(mode="on-demand")
    ca, cert, key = operator_cert(pki["store"], "Test region")
    with TcpProxy(lami.http_port, tls=server_context(pki, "lami")) as proxy:
        client = nodeapi.NodeClient(proxy.url, lami.username, lami.password, str(ca), str(cert), str(key),
                                    name="lami")
        assert client.replication_status()["policy"] == "on-demand"
        with pytest.raises(nodeapi.NodeError) as exc:
            client.replicate(study="1.2.3")
        assert exc.value.status == 404
        no_cert = nodeapi.NodeClient(proxy.url, lami.username, lami.password, str(ca), name="lami")
        with pytest.raises(nodeapi.NodeError) as exc:
            no_cert.replication_status()
        assert exc.value.unreachable


def test_cli_problems_release_parked_and_correct_against_a_node(make_node, tsami, monkeypatch, capsys):
    """The operator's commands for what needs a person, against a real LAMI."""
    lami = make_node(mode="all")

    def only_lami(region_, node, *, lab=False):
        return nodeapi.NodeClient(lami.url, lami.username, lami.password, name=node)

    monkeypatch.setattr(nodeapi, "client_for", only_lami)
    monkeypatch.setattr("kontur.replication_cli.replicating_nodes", lambda region_: ["onco-lami"])
    refused = make_study(1, patient_id="REFUSED")            # the TsAMI's filter refuses it
    good = make_study(2, n_series=2)
    lami.store(refused)
    lami.store(good)
    wait_delivered(tsami, good)
    wait_for(lambda: lami.status()["parked"] == 1, 60, message="a parked study")

    rc, out, err = _run(capsys, "replication", "problems")
    assert rc == 1 and "parked" in out and refused.orthanc_id() in out and "FilteredOut" in out
    rc, out, _ = _run(capsys, "replication", "problems", "--json")
    assert json.loads(out)[0]["parked"][0]["study_id"] == refused.orthanc_id()

    rc, out, err = _run(capsys, "replicate", "--release-parked", "--hospital", "onco",
                        "--reason", "the TsAMI's filter was fixed")
    assert rc == 0, err
    assert refused.orthanc_id() in out
    wait_for(lambda: lami.status()["counters"].get("parked_total") == 2, 60,
             message="the released study tried again (and refused again)")
    assert any(a["reason"] == "the TsAMI's filter was fixed"
               for a in lami.get("/kontur/replication/problems")["audit"])
    rc, _, err = _run(capsys, "replicate", "--release-parked", "--study", "1.2.3")
    assert rc == 2 and "takes no --study" in err

    # reject a wrong series by its SeriesInstanceUID: gone here and at the TsAMI
    wrong = good.instances[1].series_uid
    rc, out, err = _run(capsys, "replication", "correct", "reject", "--node", "onco-lami", "--series", wrong,
                        "--reason", "another patient's series")
    assert rc == 0, err
    assert '"correction"' in out
    keep = {i.sop_uid for i in good.instances if i.series_uid != wrong}
    wait_for(lambda: tsami.sop_uids_of_study(good.orthanc_id()) == keep, 60, message="the series retired upstream")
    rc, _, err = _run(capsys, "replication", "correct", "reject", "--node", "onco-lami", "--series", wrong,
                      "--reason", "again")
    assert rc == 1 and "holds no series" in err
    rc, _, err = _run(capsys, "replication", "correct", "sync", "--node", "onco-lami", "--series", wrong,
                      "--reason", "x")
    assert rc == 2 and "sync takes --study only" in err
