# SPDX-License-Identifier: AGPL-3.0-or-later
"""Reconciliation: what is missing upstream (pure functions).

Orthanc's StableStudy is a quiet-period heuristic held in memory (a restart
forgets the pending ones) and Orthanc never retries a failed job, so the
plugin does not trust events alone:

* incrementally, it reads Orthanc's ``/changes`` from a position saved in the
  outbox (NewInstance marks the study as "waiting for stability"; a study
  quiet for StableAge + grace is treated as stable even if the event was lost);
* periodically, a full pass pages through the local studies, compares
  per-study instance counts with the upstream (QIDO-RS, ~50 studies per
  request; the local count comes from the outbox when the study is unchanged
  since its verified delivery) and re-queues those the upstream has fewer of;
  instance lists are compared only for those, by the sender.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's deterministic study identifier (SHA-1 of "PatientID|StudyInstanceUID")."""
    h = hashlib.sha1(f"{patient_id}|{study_uid}".encode("utf-8")).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def missing_instances(local: set[str], remote: set[str]) -> list[str]:
    """Instances this node holds that the upstream lacks, in a stable order."""
    return sorted(local - remote)


def verified(local: set[str], remote: set[str]) -> bool:
    """Delivered means the upstream holds every instance held here."""
    return local <= remote


@dataclass(frozen=True)
class Shortfall:
    study_id: str
    local: int
    remote: int


def count_shortfalls(local_counts: dict[str, int], remote_counts: dict[str, int]) -> list[Shortfall]:
    """Studies the upstream holds fewer instances of than this node does."""
    out = []
    for sid in sorted(local_counts):
        loc = local_counts[sid]
        rem = remote_counts.get(sid, 0)
        if loc > 0 and rem < loc:
            out.append(Shortfall(sid, loc, rem))
    return out


def known_local_count(row: dict | None, last_update: str | None) -> int | None:
    """The local instance count the outbox can vouch for without listing the
    study: it was verified delivered and Orthanc's LastUpdate has not moved."""
    if not row or row.get("state") != "delivered" or row.get("delivered_count") is None:
        return None
    if not last_update or row.get("delivered_last_update") != last_update:
        return None
    return int(row["delivered_count"])


def parse_change_batch(changes: list[dict]) -> list[tuple[str, str, int]]:
    """(kind, resource id, seq) for the changes replication cares about, in order."""
    out = []
    for ch in changes:
        kind = ch.get("ChangeType")
        if kind == "NewInstance" or (kind == "StableStudy" and ch.get("ResourceType") == "Study"):
            out.append((kind, ch.get("ID"), int(ch.get("Seq", 0))))
    return out
