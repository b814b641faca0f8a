"""The upstream client against a stdlib HTTP server on loopback (no Orthanc)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kontur_plugins.replication.config import Upstream
from kontur_plugins.replication.pacing import Pacer
from kontur_plugins.replication.reconcile import set_digest
from kontur_plugins.replication.transport import RefusedError, TransientError, UpstreamClient


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received: list[bytes] = []
    digest_requests: list[list[str]] = []
    mode = {"post": 200, "status": "Success"}

    def log_message(self, *a):
        pass

    def _answer(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers["Content-Length"])
        body = self.rfile.read(n)
        assert self.headers["Authorization"].startswith("Basic ")
        Handler.received.append(body)
        if self.path == "/kontur/digests":
            asked = json.loads(body)["studies"]
            Handler.digest_requests.append(asked)
            held = {"known": ["a", "b", "c"]}
            self._answer(200, {"kontur": "receiver", "studies": {
                sid: {"instances": len(held[sid]), "digest": set_digest(held[sid])} for sid in asked if sid in held}})
            return
        code = Handler.mode["post"]
        if code == 200:
            self._answer(200, {"ID": "x", "Status": Handler.mode["status"]})
        else:
            self._answer(code, {"Message": "Bad file format", "Details": "nope", "OrthancError": "Bad file format",
                                "OrthancStatus": 15})

    def do_GET(self):
        if self.path.startswith("/studies/known/series"):
            self._answer(200, [{"Instances": ["a", "b"]}, {"Instances": ["c"]}])
        else:
            self._answer(404, {"HttpError": "Not Found", "Message": "Unknown resource",
                               "OrthancError": "Unknown resource", "OrthancStatus": 17})


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    Handler.received = []
    Handler.digest_requests = []
    Handler.mode = {"post": 200, "status": "Success"}
    yield srv
    srv.shutdown()
    srv.server_close()


OPEN: list[UpstreamClient] = []


@pytest.fixture(autouse=True)
def close_clients():
    yield
    while OPEN:
        OPEN.pop().close()


def client(server, pacer=None):
    up = Upstream("tsami", f"http://127.0.0.1:{server.server_address[1]}/", "peer", "pw")
    c = UpstreamClient(up, timeout=5, chunk_bytes=16384, pacer=pacer)
    OPEN.append(c)
    return c


def test_post_instance_paced_and_answers(server):
    rate = 200_000.0
    c = client(server, Pacer(rate))
    data = bytes(range(256)) * 1200          # ~300 kB: 1.5 s at 200 kB/s
    t0 = time.monotonic()
    assert c.post_instance(data)["Status"] == "Success"
    elapsed = time.monotonic() - t0
    assert Handler.received[-1] == data
    assert elapsed >= (len(data) - 16384) / rate * 0.99
    Handler.mode["status"] = "AlreadyStored"
    assert c.post_instance(b"x" * 10)["Status"] == "AlreadyStored"


def test_refusals_and_filters(server):
    c = client(server)
    Handler.mode["post"] = 400
    with pytest.raises(RefusedError, match="HTTP 400: Bad file format: nope"):
        c.post_instance(b"x")
    Handler.mode["post"] = 503
    with pytest.raises(TransientError, match="HTTP 503"):
        c.post_instance(b"x")
    Handler.mode.update(post=200, status="FilteredOut")
    with pytest.raises(RefusedError, match="FilteredOut"):
        c.post_instance(b"x")


def test_listing_digests_and_a_dead_link(server):
    c = client(server)
    assert c.study_instance_ids("known") == {"a", "b", "c"}
    assert c.study_instance_ids("unknown") == set()
    ids = ["known", "other"] + [f"s{k}" for k in range(150)]
    got = c.digests(ids)
    assert got["known"] == (3, set_digest(["a", "b", "c"])) and got["other"] == (0, set_digest([]))
    # asked exactly for these studies, in batches no larger than the upstream's LimitFindResults
    assert [len(b) for b in Handler.digest_requests] == [100, 52]
    assert sorted(sum(Handler.digest_requests, [])) == sorted(ids)
    assert c.receiver_available is True
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    dead = UpstreamClient(Upstream("tsami", f"http://127.0.0.1:{port}/", "p", "w"), timeout=2)
    with pytest.raises(TransientError, match="cannot reach tsami"):
        dead.post_instance(b"x")


def test_a_renewed_certificate_or_ca_bundle_on_disk_is_used_for_the_next_connection(tmp_path):
    """A deploy replaces the CA bundle, the node's certificate and key by rename (a renewal, a CA
    rotation's phases) without restarting Orthanc: the sender's next connection uses the new files."""
    import os
    import ssl

    from kontur.pki import node_cert
    from kontur.secrets import SecretStore

    old, new = SecretStore(tmp_path / "old"), SecretStore(tmp_path / "new")
    server_old = node_cert(old, "Region", "tsami", ["127.0.0.1"])
    server_new = node_cert(new, "Region", "tsami", ["127.0.0.1"])
    for name, data in (("old.crt", server_old.cert_pem), ("old.key", server_old.key_pem),
                       ("new.crt", server_new.cert_pem), ("new.key", server_new.key_pem)):
        (tmp_path / name).write_bytes(data)
    ca_old, ca_new = (old.pki_dir / "ca.crt").read_bytes(), (new.pki_dir / "ca.crt").read_bytes()
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca_old)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "old.crt", tmp_path / "old.key")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        client = UpstreamClient(Upstream("tsami", f"https://127.0.0.1:{httpd.server_address[1]}/", "peer", "pw",
                                         ca_file=str(ca_file)), timeout=5)
        assert client.request("GET", "/nothing")[0] == 404
        client.close()
        # the deploy of a CA rotation: the bundle gains the new CA (rename), the server's certificate is the new CA's
        (tmp_path / "bundle.tmp").write_bytes(ca_old + ca_new)
        os.replace(tmp_path / "bundle.tmp", ca_file)
        ctx.load_cert_chain(tmp_path / "new.crt", tmp_path / "new.key")
        assert client.request("GET", "/nothing")[0] == 404
    finally:
        httpd.shutdown()
        httpd.server_close()
