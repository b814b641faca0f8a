"""`kontur replication status` asks the nodes at once, each with its own timeout
(issue 14), against a real LAMI Orthanc, a node that accepts and never answers,
and nodes whose port is closed."""
from __future__ import annotations

import json
import socket

import pytest

from kontur import nodeapi
from kontur.cli import main as kontur_main
from kontur.testing.orthanc import free_port

pytestmark = pytest.mark.orthanc

NODES = ("onco-lami", "gkb3-lami", "perinatal-lami", "crb-gw", "mammo-gw")


@pytest.fixture
def silent():
    """A node that does not answer: the kernel completes the TCP handshake
    (the listen backlog), nobody ever reads the request."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s
    s.close()


def accepted(s: socket.socket) -> int:
    """How many connections wait in the backlog (each a request that was made)."""
    s.setblocking(False)
    n = 0
    while True:
        try:
            c, _ = s.accept()
        except BlockingIOError:
            return n
        c.close()
        n += 1


def test_a_silent_node_costs_its_timeout_once_and_every_other_node_is_reported(make_node, silent, monkeypatch,
                                                                               capsys):
    lami = make_node(mode="on-demand")
    closed = f"http://127.0.0.1:{free_port()}/"
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/"

    def client_for(region_, node, *, lab=False):
        if node == "onco-lami":
            return nodeapi.NodeClient(lami.url, lami.username, lami.password, name=node)
        # the default timeout is long: only --timeout can make this test end in seconds
        return nodeapi.NodeClient(silent_url if node == "gkb3-lami" else closed, "kontur", "x", name=node,
                                  timeout=600)

    monkeypatch.setattr(nodeapi, "client_for", client_for)
    rc = kontur_main(["replication", "status", "--json", "--timeout", "1"])
    cap = capsys.readouterr()
    assert rc == 1, cap.err
    rows = {r["node"]: r for r in json.loads(cap.out)}
    assert list(rows) == list(NODES)
    assert rows["onco-lami"]["reachable"] and rows["onco-lami"]["status"]["policy"] == "on-demand"
    assert rows["onco-lami"]["problems"] == []
    assert not rows["gkb3-lami"]["reachable"] and "timed out" in rows["gkb3-lami"]["error"]
    assert silent_url in rows["gkb3-lami"]["error"]
    for n in ("perinatal-lami", "crb-gw", "mammo-gw"):
        assert not rows[n]["reachable"] and "refused" in rows[n]["error"].lower(), rows[n]
    assert accepted(silent) == 1                    # asked once, not again after its timeout

    # the table says the same, and every problem once, whole, on stderr
    rc = kontur_main(["replication", "status", "--timeout", "1"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "4 of 5 replicating node(s) need attention" in cap.err
    assert f"kontur: gkb3-lami: unreachable at {silent_url}: timed out" in cap.err
    assert all(n in cap.out for n in NODES) and "on-demand" in cap.out
