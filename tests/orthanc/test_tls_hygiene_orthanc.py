"""TLS hygiene of a node's nginx, as rendered (issue 15, defect 11): Debian's
nginx runs the rendered site on loopback and OpenSSL's own client
(``openssl s_client``, a peer kontur did not write) tries each suite.

TLS 1.2 is offered with forward-secret AEAD suites only (ECDHE with AES-GCM
or ChaCha20-Poly1305): the CBC suites nginx's default ``HIGH`` list still
includes are refused at the handshake; TLS 1.3 (AEAD by design) is offered.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kontur.testing.rendered import RenderedNode

REPO = Path(__file__).resolve().parents[2]
REGION = REPO / "tests" / "data" / "replication-region.yaml"

#: suites nginx's default list (HIGH:!aNULL:!MD5) accepts with the region's ECDSA keys
CBC_SUITES = ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256",
              "ECDHE-ECDSA-AES256-SHA384")
AEAD_SUITES = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
               "ECDHE-ECDSA-CHACHA20-POLY1305")


@pytest.fixture(scope="module")
def tsami(tmp_path_factory):
    node = RenderedNode(REGION, "repl-tsami", tmp_path_factory.mktemp("tls") / "tsami")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def handshake(node: RenderedNode, *args: str) -> subprocess.CompletedProcess:
    """One handshake by OpenSSL's client (no client certificate: nginx asks for
    one and answers 400 without it, after the handshake -- what is tried here)."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{node.https_port}", "-servername", "repl-tsami",
         "-CAfile", str(node.tls / "ca.crt"), "-brief", *args],
        input=b"", capture_output=True, timeout=30)


@pytest.mark.parametrize("suite", CBC_SUITES)
def test_a_cbc_suite_is_refused_over_tls_1_2(tsami, suite):
    done = handshake(tsami, "-tls1_2", "-cipher", suite)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0 and "handshake failure" in out, out


@pytest.mark.parametrize("suite", AEAD_SUITES)
def test_a_forward_secret_aead_suite_is_accepted_over_tls_1_2(tsami, suite):
    done = handshake(tsami, "-tls1_2", "-cipher", suite)
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert f"Ciphersuite: {suite}" in out, out


def test_tls_1_3_is_offered(tsami):
    done = handshake(tsami, "-tls1_3")
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert "Protocol version: TLSv1.3" in out, out


def test_a_revoked_browser_certificate_is_refused_and_a_colleagues_still_works(tmp_path):
    """`kontur users revoke`, then the node as rendered: Debian's nginx refuses
    the revoked certificate (400, "certificate revoked" in its log) and lets
    the colleague's through to Orthanc's own login (401 without a password)."""
    from kontur import revocation
    from kontur.inventory import load
    from kontur.pki import user_cert
    from kontur.secrets import SecretStore

    store = SecretStore(tmp_path / "secrets")
    title = load(REGION).region.title
    users = {}
    for login in ("lost", "colleague"):
        pair = user_cert(store, title, login)
        d = tmp_path / login
        d.mkdir()
        (d / "u.crt").write_bytes(pair.cert_pem)
        (d / "u.key").write_bytes(pair.key_pem)
        users[login] = d
    revocation.revoke(store, "lost", (users["lost"] / "u.crt").read_bytes(), "laptop lost")

    def status(node, login):
        d = users[login]
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                            "--cacert", str(node.tls / "ca.crt"), "--cert", str(d / "u.crt"),
                            "--key", str(d / "u.key"), node.url + "system"],
                           capture_output=True, text=True, timeout=30)
        return p.stdout

    with RenderedNode(REGION, "repl-tsami", tmp_path / "tsami", store=store) as node:
        assert status(node, "colleague") == "401"
        assert status(node, "lost") == "400"
        assert "certificate revoked" in (node.nginx.workdir / "error.log").read_text()
