# SPDX-License-Identifier: AGPL-3.0-or-later
"""`kontur research reidentify` and `audit` on the control machine: with feeds exported at more than one
node (the TsAMI and a LAMI named with `at`), each node holds the key map of its own feeds, so the
request goes to each in turn (the TsAMI first) and the audit trail is read from every one.  The nodes'
answers are stood in for here (their side: tests/orthanc/test_research_orthanc.py, the lab test)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kontur.cli import main
from kontur.cli import research as research_cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"
LAMI_FEED = """    onco-mr:
      destination: research
      at: onco-lami
      select:
        modalities: [MR]
"""


@pytest.fixture
def two_exporters(tmp_path, monkeypatch):
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        "file: classifier/procedures.csv", f"file: {EXAMPLE.parent / 'classifier' / 'procedures.csv'}")
    text = text.replace("  feeds:\n", "  feeds:\n" + LAMI_FEED, 1)
    inv = tmp_path / "region.yaml"
    inv.write_text(text, encoding="utf-8")
    asked: list[tuple[str, list[str]]] = []
    answers: dict[str, tuple[int, str, str]] = {}

    def run(where, node, argv, timeout=0):
        asked.append((node, argv))
        rc, out, err = answers[node] if argv[argv.index("kontur_plugins.research") + 1] != "audit" else \
            answers[node + ":audit"]
        return subprocess.CompletedProcess(argv, rc, out, err)

    monkeypatch.setattr(research_cli, "_run", run)
    monkeypatch.setattr(research_cli.target, "resolve", lambda region, **kw: None)
    return inv, asked, answers


def test_a_pseudonym_of_a_lamis_feed_is_found_at_that_lami_after_the_tsami_says_it_does_not_know_it(
        two_exporters, capsys):
    inv, asked, answers = two_exporters
    answers["tsami"] = (2, "", "kontur research: 'R42-AB' is no pseudonym or research study UID this node "
                               "exported (audited)\n")
    answers["onco-lami"] = (0, json.dumps({"pseudonym": "R42-AB", "patient_name": "Иванов^Пётр",
                                           "patient_id": "ONCO-1", "issuer": "42-ONCO"}) + "\n", "")
    rc = main(["research", "reidentify", "R42-AB", "--reason", "возврат", "--as", "archivist", "-i", str(inv)])
    assert rc == 0 and "Иванов^Пётр" in capsys.readouterr().out
    assert [n for n, _ in asked] == ["tsami", "onco-lami"]


def test_a_pseudonym_no_exporting_node_knows_is_refused_naming_them_all(two_exporters, capsys):
    inv, asked, answers = two_exporters
    unknown = (2, "", "kontur research: 'R42-ZZ' is no pseudonym or research study UID this node exported\n")
    answers["tsami"] = answers["onco-lami"] = unknown
    rc = main(["research", "reidentify", "R42-ZZ", "--reason", "r", "--as", "archivist", "-i", str(inv)])
    assert rc == 1 and "any exporting node (tsami, onco-lami)" in capsys.readouterr().err
    # a refused user is audited at the first node only, and nothing else is asked
    asked.clear()
    rc = main(["research", "reidentify", "R42-ZZ", "--reason", "r", "--as", "ivanova", "-i", str(inv)])
    assert rc == 1 and [n for n, _ in asked] == ["tsami"] and "--refused" in asked[0][1]


def test_the_audit_trail_is_read_from_every_exporting_node_in_time_order(two_exporters, capsys):
    inv, asked, answers = two_exporters
    row = lambda at, who: json.dumps({"at": at, "who": who, "reason": "r", "asked": "R42-AB",  # noqa: E731
                                      "answer": "found"})
    answers["tsami:audit"] = (0, row(200.0, "archivist") + "\n", "")
    answers["onco-lami:audit"] = (0, row(100.0, "keeper") + "\n", "")
    rc = main(["research", "audit", "--json", "-i", str(inv)])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0 and [(r["node"], r["who"]) for r in rows] == [("onco-lami", "keeper"), ("tsami", "archivist")]
