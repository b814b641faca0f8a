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


def test_status_without_a_secrets_store_says_so_once_with_the_fix(capsys, monkeypatch, tmp_path):
    """A fault of the control machine is exit 2 with its cause and its fix, said once -- not
    "5 of 5 nodes need attention", not five times the same line (issue 14)."""
    monkeypatch.setenv("KONTUR_SECRETS", str(tmp_path / "none"))
    for args in ((), ("--json",)):
        rc, out, err = run(capsys, "replication", "status", *args)
        assert rc == 2, err
        assert out == ""
        assert err.count("no secrets store") == 1 and str(tmp_path / "none") in err
        assert "kontur secrets import" in err and "KONTUR_SECRETS" in err      # the fix
        assert "need attention" not in err and "onco-lami" not in err and "Traceback" not in err
    assert not (tmp_path / "none").exists()                                  # and nothing was made


def test_status_with_a_store_that_lost_its_ca_is_a_setup_fault_and_makes_no_new_ca(capsys, monkeypatch, tmp_path):
    """No operator certificate can be made from a store whose CA is gone: exit 2, once, and no new CA."""
    from kontur.inventory import load
    from kontur.secrets import SecretStore
    d = tmp_path / "store"
    store = SecretStore(d)
    for n in load().nodes:
        store.password(f"nodes/{n}/{nodeapi.SERVICE_USER}", 24)
    issued = d / "pki" / "nodes"
    issued.mkdir(parents=True, exist_ok=True)
    (issued / "onco-lami.crt").write_text("a certificate the lost CA issued\n")
    monkeypatch.setenv("KONTUR_SECRETS", str(d))
    rc, out, err = run(capsys, "replication", "status")
    assert rc == 2, err
    assert err.count("cannot ask any node") == 1 and "its CA was lost" in err, err
    assert "need attention" not in err
    assert not (d / "pki" / "ca.crt").exists() and not (d / "pki" / "ca.key").exists()


def test_status_prints_each_unreachable_node_once_without_its_name_twice(capsys, monkeypatch):
    def dead(region, node, *, lab=False):
        return nodeapi.NodeClient("http://127.0.0.1:9/", "kontur", "x", name=node, timeout=1)

    monkeypatch.setattr(nodeapi, "client_for", dead)
    rc, out, err = run(capsys, "replication", "status")
    assert rc == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("kontur: onco-lami")]
    assert len(lines) == 1 and lines[0].startswith("kontur: onco-lami: unreachable at http://127.0.0.1:9/")
    assert "5 of 5 replicating node(s) need attention" in err


class Answering:
    def __init__(self, node):
        self.node = node
        self.timeout = None

    def replication_status(self):
        if self.node == "crb-gw":
            raise nodeapi.NodeError(f"{self.node}: unreachable at https://10.0.0.1:443/: timed out")
        return {"enabled": True, "policy": "all", "queue_depth": 0, "window_open": True}


def test_status_on_a_terminal_shows_a_line_per_node_while_they_answer(capsys, monkeypatch):
    import io
    import re

    from rich.console import Console

    from kontur import replication_cli
    buf = io.StringIO()
    monkeypatch.setattr(replication_cli, "err", Console(file=buf, force_terminal=True, width=80))
    made = {}
    monkeypatch.setattr(nodeapi, "client_for", lambda region, node, *, lab=False: made.setdefault(node, Answering(node)))
    rc, out, _ = run(capsys, "replication", "status", "--timeout", "3")
    assert rc == 1
    board = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "replication status:" in board and "host(s) done" in board
    for n in ("onco-lami", "gkb3-lami", "perinatal-lami", "crb-gw", "mammo-gw"):
        assert n in board and n in out
    assert "kontur: crb-gw: unreachable at https://10.0.0.1:443/: timed out" in board
    assert {c.timeout for c in made.values()} == {3.0}                     # --timeout reaches every client
    # piped: no board at all, the plain output of before
    from kontur import cli
    monkeypatch.setattr(replication_cli, "err", cli.err)
    rc, out, err = run(capsys, "replication", "status")
    assert "kontur: crb-gw: unreachable at https://10.0.0.1:443/: timed out" in err
    assert "host(s) done" not in err and "\x1b[" not in err + out


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


def test_status_of_the_lab_with_no_lab_running_is_a_setup_fault(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KONTUR_LAB_DIR", str(tmp_path / "no-lab"))
    rc, out, err = run(capsys, "replication", "status", "--lab")
    assert rc == 2, err
    assert err.count("no lab is running") == 1 and "hint: " in err and "kontur lab" in err   # up, or where one is
    assert "need attention" not in err and "Traceback" not in err
