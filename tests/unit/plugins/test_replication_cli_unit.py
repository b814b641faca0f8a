"""kontur replicate / replication status: usage and unreachable nodes (no Orthanc)."""
from __future__ import annotations

import json

from kontur import nodeapi
from kontur.cli import main


def run(capsys, *args):
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "replicate")[0] == 2
    rc, _, err = run(capsys, "replicate", "--study", "1.2", "--patient", "P")
    assert rc == 2 and "exactly one" in err
    rc, _, err = run(capsys, "replicate", "--study", "1.2", "--node", "research")
    assert rc == 2 and "only LAMI and gateway" in err and "Traceback" not in err


def test_unreachable_region_exits_1_with_every_node_listed(capsys, monkeypatch):
    def dead(region, node, *, lab=False):
        return nodeapi.NodeClient("http://127.0.0.1:9/", "kontur", "x", name=node, timeout=1)

    monkeypatch.setattr(nodeapi, "client_for", dead)
    rc, out, err = run(capsys, "replication", "status", "--json")
    assert rc == 1
    rows = json.loads(out)
    assert [r["node"] for r in rows] == ["onco-lami", "gkb3-lami", "perinatal-lami", "crb-gw", "mammo-gw"]
    assert all(not r["reachable"] and "unreachable" in r["error"] for r in rows)
    rc, out, err = run(capsys, "replicate", "--study", "1.2.3")
    assert rc == 1 and "could not be asked" in err


def test_client_for_without_secrets_says_what_to_do(monkeypatch, tmp_path):
    import pytest

    from kontur.errors import InvalidInput
    from kontur.inventory import load
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "none"))
    with pytest.raises(InvalidInput, match="kontur render"):
        nodeapi.client_for(load(), "onco-lami")


def test_status_without_a_secrets_store_says_so_not_every_node_unhealthy(capsys, monkeypatch, tmp_path):
    """A fault of the control machine is exit 2 with its cause, not "5 of 5 nodes need attention" (issue 14)."""
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "none"))
    rc, out, err = run(capsys, "replication", "status")
    assert rc == 2, err
    assert "this machine cannot ask any node" in err and "kontur render" in err
    assert "need attention" not in err + out


def test_status_asks_the_nodes_at_once(capsys, monkeypatch):
    """Five nodes that each take a while answer in about the time of one: every call is in flight together."""
    import threading
    inside, most = [0], [0]
    lock = threading.Lock()
    barrier = threading.Barrier(5, timeout=30)

    class Slow:
        def __init__(self, node):
            self.node = node

        def replication_status(self):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            barrier.wait()              # all five must be inside at once, or this times out
            with lock:
                inside[0] -= 1
            return {"enabled": True, "policy": "all", "queue_depth": 0, "window_open": True}

    monkeypatch.setattr(nodeapi, "client_for", lambda region, node, *, lab=False: Slow(node))
    rc, out, err = run(capsys, "replication", "status", "--json")
    assert most[0] == 5, (most, err)
    assert [r["node"] for r in json.loads(out)] == ["onco-lami", "gkb3-lami", "perinatal-lami", "crb-gw", "mammo-gw"]
