"""Issue 10, bad input: every file shipped in pydicom's wheel under
``pydicom/data/test_files`` (truncated, big endian, no file meta, bad VR,
deflated, JPEG of every kind, not DICOM at all, ...) sent through a LAMI with
kontur's ingest stage and validation (warn): each is stored and classified or
refused with a reason; nothing crashes Orthanc; nothing stored is lost.

The files go by REST (``POST /instances``): storescu refuses to send many of
them, a LAMI's REST upload takes whatever it is given.  The lab variant
(``tests/deploy``) sends the DICOM ones from a modality namespace.
"""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from kontur.testing.orthanc import HttpError, OrthancProcess, wait_for

pytestmark = pytest.mark.orthanc

CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"


def corpus() -> list[Path]:
    return sorted(p for p in CORPUS.rglob("*") if p.is_file())


def upload_all(node, files: list[Path]) -> tuple[dict[str, str], dict[str, str]]:
    stored: dict[str, str] = {}          # Orthanc instance ID -> file
    refused: dict[str, str] = {}         # file -> Orthanc's reason
    for f in files:
        try:
            answer = node.upload(f.read_bytes())
        except HttpError as exc:
            assert 400 <= exc.status < 500, (f, exc.status, exc.body[:200])   # refused, with its reason
            refused[str(f.relative_to(CORPUS))] = exc.body.decode("utf-8", "replace")[:200]
            continue
        for a in answer if isinstance(answer, list) else [answer]:
            stored[a["ID"]] = str(f.relative_to(CORPUS))
    return stored, refused


def test_the_pydicom_corpus_is_stored_and_classified_or_refused_with_a_reason(tmp_path, processes, make_node):
    files = corpus()
    assert len(files) > 100, f"pydicom's test files are missing under {CORPUS}"
    lami = make_node(transfer={"enabled": True, "repair_text": True, "issuer": "42-TEST",
                               "validation": {"mode": "warn", "classifier": None}})
    stored, refused = upload_all(lami, files)
    # the stage makes Orthanc refuse nothing it would store without kontur
    bare = OrthancProcess("bare", {}, tmp_path / "bare", aet="BARE")
    processes.append(bare)
    bare.start()
    bare_stored, bare_refused = upload_all(bare, files)
    assert sorted(refused) == sorted(bare_refused)
    assert sorted(set(stored.values())) == sorted(set(bare_stored.values()))
    assert lami.get("/system")["Version"]                  # Orthanc is alive
    assert stored and refused, (len(stored), len(refused))
    # nothing stored is lost: every instance Orthanc acknowledged is there
    held = set(lami.get("/instances"))
    assert set(stored) <= held and len(held) == len(set(stored))
    # the stage saw every instance Orthanc parsed, and says what it did with each
    ingest = lami.status()["ingest"]
    assert ingest["failed"] == 0
    assert ingest["seen"] == ingest["changed"] + ingest["unchanged"] + ingest["left_as_received"]
    assert ingest["seen"] >= len(set(stored))
    logged = lami.log_text().count("ingest: instance left as received:")
    assert logged == ingest["left_as_received"]
    # every stored study is classified (warn: the findings are kept, nothing is held)
    studies = set(lami.get("/studies"))

    def classified() -> bool:
        s = lami.get("/kontur/quarantine")["summary"]
        return s["valid"] + s["incomplete"] + s["quarantined"] >= len(studies)
    wait_for(classified, 120, message="every stored study validated")
    summary = lami.get("/kontur/quarantine")["summary"]
    assert summary["valid"] + summary["incomplete"] + summary["quarantined"] == len(studies)
    assert summary["top_reasons"]
    print(f"\npydicom corpus: {len(files)} files, {len(set(stored))} instances stored in {len(studies)} studies, "
          f"{len(refused)} refused; ingest {ingest}; validation {summary}")
