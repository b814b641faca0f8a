# SPDX-License-Identifier: AGPL-3.0-or-later
"""A CA rotation against Debian's nginx and real Orthanc, as rendered (kontur.rotation).

A node rendered before the rotation, one rendered in phase 1 (both CAs
trusted, its certificate still the old CA's) and one rendered in phase 2 (its
certificate from the new CA) run side by side on loopback; clients with a
node certificate of the old CA and of the new CA call each of them with
mutual TLS, as the nodes' Orthanc peers and nginx proxies do.  Also the gate
of each phase (``rotation.not_ready``'s handshake) against those nginx.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509

from kontur import rotation
from kontur.inventory import load
from kontur.pki import node_cert
from kontur.secrets import SecretStore
from kontur.testing.orthanc import LOOPBACK
from kontur.testing.rendered import RenderedNode

REPO = Path(__file__).resolve().parents[2]
REGION = REPO / "tests" / "data" / "replication-region.yaml"
NODE, PEER = "repl-tsami", "all-lami"


def _client(store, tmp_path: Path, label: str) -> Path:
    """PEER's node certificate as the store issues it now, copied aside."""
    region = load(REGION)
    pair = node_cert(store, region.region.title, PEER, [region.nodes[PEER].address])
    d = tmp_path / f"client-{label}"
    d.mkdir()
    (d / "node.crt").write_bytes(pair.cert_pem)
    (d / "node.key").write_bytes(pair.key_pem)
    (d / "node.key").chmod(0o600)
    return d


def _get(node: RenderedNode, client: Path, password: str) -> str:
    """HTTP status of GET /system through the node's nginx, PEER's certificate, the service login."""
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                        "--cacert", str(node.tls / "ca.crt"), "--cert", str(client / "node.crt"),
                        "--key", str(client / "node.key"), "-u", f"kontur:{password}", node.url + "system"],
                       capture_output=True, text=True, timeout=30)
    return p.stdout


def _new_ca_probe(store, title, tmp_path: Path, new) -> tuple[Path, Path]:
    d = tmp_path / "probe"
    d.mkdir(exist_ok=True)
    node_cert(store, title, "probe", [], client_only=True, directory=d, ca=new)
    return d / "probe.crt", d / "probe.key"


def test_old_and_new_certificates_talk_during_the_change_over(tmp_path):
    store = SecretStore(tmp_path / "secrets")
    title = load(REGION).region.title
    before = RenderedNode(REGION, NODE, tmp_path / "before", store=store)
    old_client = _client(store, tmp_path, "old")
    password = before.password
    rotation.start_ca(store, title, "drill")
    phase1 = RenderedNode(REGION, NODE, tmp_path / "phase1", store=store)
    new = rotation._pair(store, rotation.NEXT_CA)
    probe = _new_ca_probe(store, title, tmp_path, new)
    with before, phase1:
        # phase 1: the old certificates work everywhere
        assert _get(before, old_client, password) == "200"
        assert _get(phase1, old_client, password) == "200"
        # the gate of --continue: a node deployed in phase 1 accepts the new CA, one not yet deployed refuses it
        _, _, why = rotation._handshake(LOOPBACK, phase1.https_port, phase1.tls / "ca.crt", *probe, 20)
        assert why is None
        _, _, why = rotation._handshake(LOOPBACK, before.https_port, phase1.tls / "ca.crt", *probe, 20)
        assert why == "refused the client certificate of the new CA"

        rotation.continue_ca(store, title, "drill", not_ready=[])
        new_client = _client(store, tmp_path, "new")
        with RenderedNode(REGION, NODE, tmp_path / "phase2", store=store) as phase2:
            # phase 2: a node with the new certificate and a node with the old one call each other
            assert _get(phase1, new_client, password) == "200", "a phase-1 node accepts a new certificate"
            assert _get(phase2, old_client, password) == "200", "a phase-2 node accepts an old certificate"
            assert _get(phase2, new_client, password) == "200"
            # the gate of --finish: who presents a certificate of the new CA
            new_ca = x509.load_pem_x509_certificate(new.cert_pem)
            der, _, why = rotation._handshake(LOOPBACK, phase2.https_port, phase2.tls / "ca.crt", *probe, 20)
            assert why is None
            x509.load_der_x509_certificate(der).verify_directly_issued_by(new_ca)
            der, _, _ = rotation._handshake(LOOPBACK, phase1.https_port, phase2.tls / "ca.crt", *probe, 20)
            assert x509.load_der_x509_certificate(der).issuer != new_ca.subject

            rotation.finish_ca(store, title, "drill", not_ready=[])
            with RenderedNode(REGION, NODE, tmp_path / "phase3", store=store) as phase3:
                # phase 3: the old CA no longer trusted
                assert _get(phase3, new_client, password) == "200"
                assert _get(phase3, old_client, password) == "400"
