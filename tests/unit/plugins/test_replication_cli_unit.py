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
