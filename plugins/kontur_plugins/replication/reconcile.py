# SPDX-License-Identifier: AGPL-3.0-or-later
"""Reconciliation: what is missing upstream (pure functions).

Orthanc's StableStudy is a quiet-period heuristic held in memory (a restart
forgets the pending ones) and Orthanc never retries a failed job, so the
plugin does not trust events alone:

* incrementally, it reads Orthanc's ``/changes`` from a position saved in the
  outbox (``feed``);
* periodically, a full pass (``fullpass``) compares every study's instance
  *set* with the upstream's: a digest of the sorted Orthanc instance IDs on
  each side (Orthanc's instance ID is a hash of PatientID, Study, Series and
  SOP Instance UIDs, so equal digests mean the same instances under the same
  patient), listing both sides only where the digests differ.

Counts are not enough: "a different instance with the same count" (a wrong
image deleted, its replacement's change missed) has equal counts and unequal
sets, and a gateway that deleted delivered instances holds fewer than the
upstream while one it still holds may be missing there.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

#: digest of an empty set (no instances)
EMPTY_DIGEST = hashlib.sha1(b"").hexdigest()


def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's deterministic study identifier (SHA-1 of "PatientID|StudyInstanceUID")."""
    h = hashlib.sha1(f"{patient_id}|{study_uid}".encode("utf-8")).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def set_digest(instance_ids: Iterable[str]) -> str:
    """SHA-1 over the sorted instance IDs, one per line: the same on every node
    that holds the same instances (the upstream computes it the same way)."""
    h = hashlib.sha1()
    for iid in sorted(set(instance_ids)):
        h.update(iid.encode("ascii", "replace"))
        h.update(b"\n")
    return h.hexdigest()


def missing_instances(local: set[str], remote: set[str]) -> list[str]:
    """Instances this node holds that the upstream lacks, in a stable order."""
    return sorted(local - remote)


def verified(local: set[str], remote: set[str]) -> bool:
    """Delivered means the upstream holds every instance held here."""
    return local <= remote


@dataclass(frozen=True)
class Comparison:
    """One study compared by sets: ``missing`` here but not upstream (to send),
    ``extra`` upstream but no longer here (a deletion here: never propagated
    by itself; corrections retire what was replaced)."""

    study_id: str
    local: int
    remote: int
    missing: tuple[str, ...]
    extra: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


def compare_sets(study_id: str, local: set[str], remote: set[str]) -> Comparison:
    return Comparison(study_id, len(local), len(remote), tuple(sorted(local - remote)),
                      tuple(sorted(remote - local)))


def known_local_digest(row: dict | None, last_update: str | None) -> tuple[int, str] | None:
    """(count, digest) of the local instance set that the outbox can vouch for
    without listing the study: it was verified delivered and Orthanc's
    LastUpdate has not moved since.  (A deletion here does not move LastUpdate;
    then the vouched set is larger than the local one, which is safe: the
    upstream holding it still holds everything held here.)"""
    if not row or row.get("delivered_digest") is None or row.get("delivered_count") is None:
        return None
    if row.get("state") != "delivered":
        return None
    if not last_update or row.get("delivered_last_update") != last_update:
        return None
    return int(row["delivered_count"]), str(row["delivered_digest"])


def parse_change_batch(changes: list[dict]) -> list[tuple[str, str, int]]:
    """(kind, resource id, seq) for the changes replication cares about, in order."""
    out = []
    for ch in changes:
        kind = ch.get("ChangeType")
        if kind == "NewInstance" or (kind == "StableStudy" and ch.get("ResourceType") == "Study"):
            out.append((kind, ch.get("ID"), int(ch.get("Seq", 0))))
    return out


def batch_end(seq: int, changes: list[dict]) -> int:
    return max([seq] + [int(c.get("Seq", 0)) for c in changes])
