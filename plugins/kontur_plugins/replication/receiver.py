# SPDX-License-Identifier: AGPL-3.0-or-later
"""The receiving side: routes kontur's plugin serves on every node, for the
nodes that replicate *to* it (the TsAMI serves its LAMIs and gateways).

    POST /kontur/digests  {"studies": [ID, ...]}       -> {ID: {"instances": n, "digest": sha1}}
    POST /kontur/md5      {"instances": [ID, ...]}     -> {ID: md5 | null}
    POST /kontur/retire   {"retire": [ID, ...], "requires": [study ID, ...],
                           "requires_instances": {study ID: n}, "reason": "...",
                           "correction": "node/N"}
    POST /kontur/replace  (body: the DICOM instance; headers X-Kontur-Instance: ID,
                           X-Kontur-Reason: text, X-Kontur-Reconstruct: 1 for a study's last)

Digests and MD5s come from Orthanc's index (``/studies/{id}/series``,
``/instances/{id}/attachments/dicom/md5``): no file is opened, unlike
DICOMweb's QIDO, which reads one file per study for its instance counts.

Corrections are least privilege: a peer may retire or replace only what it
sent itself (the instance's ``HttpUsername`` metadata, which Orthanc records
for every upload, is the caller's login); anything else is left and counted as
``foreign``.  Every correction is audited here (who, when, what, why), in the
node's own outbox database.  ``retire`` first checks that this node holds
every study in ``requires`` (the corrected version) with at least as many
instances as the sender verified, so the old copy is never deleted before the
new one is here.  ``replace`` keeps the old bytes until
the new instance is stored, and stores them again if that fails; with
``reconstruct`` (the last instance of a study) the study's and patient's main
tags are rebuilt from the files, as Orthanc keeps a patient's tags from its
first instance otherwise.
"""
from __future__ import annotations

import json
from typing import Any

from .local import NotFound
from .reconcile import set_digest

MAX_BATCH = 500
MAX_RETIRE = 20000
KONTUR = "receiver"


class ReceiverError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _ids(data: Any, key: str, limit: int) -> list[str]:
    if not isinstance(data, dict):
        raise ReceiverError(400, "the body must be a JSON object")
    v = data.get(key)
    if not isinstance(v, list) or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in v):
        raise ReceiverError(400, f'"{key}" must be a list of Orthanc IDs')
    if len(v) > limit:
        raise ReceiverError(400, f'"{key}": at most {limit} per request, got {len(v)}')
    return v


class Receiver:
    def __init__(self, local: Any, audit: Any, clock, log_warning=print):
        self.local = local
        self.audit = audit                 # an Outbox (its audit table), or None
        self.clock = clock
        self.warning = log_warning

    def digests(self, data: Any) -> dict:
        out = {}
        for sid in _ids(data, "studies", MAX_BATCH):
            ids = self.local.study_instance_ids(sid) or set()
            out[sid] = {"instances": len(ids), "digest": set_digest(ids)}
        return {"kontur": KONTUR, "studies": out}

    def md5(self, data: Any) -> dict:
        return {"kontur": KONTUR, "instances": {iid: self.local.instance_md5(iid)
                                                for iid in _ids(data, "instances", MAX_BATCH)}}

    def _instances_of(self, rid: str) -> list[str] | None:
        """The instances of a study, series or instance ID held here (None: none such)."""
        ids = self.local.study_instance_ids(rid)
        if ids:
            return sorted(ids)
        s = self.local.series(rid)
        if s is not None:
            return sorted(s.get("Instances", []))
        if self.local.exists("instances", rid):
            return [rid]
        return None

    def retire(self, data: Any, caller: str | None) -> dict:
        retire = _ids(data, "retire", MAX_RETIRE)
        requires = _ids(data, "requires", MAX_BATCH)
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise ReceiverError(400, '"reason" is required: say why the copy is retired')
        correction = str(data.get("correction") or "")[:100]
        if caller is None:
            raise ReceiverError(403, "an authenticated peer account is required")
        counts = data.get("requires_instances") or {}
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise ReceiverError(400, '"requires_instances" must map study IDs to instance counts')
        lacking = [sid for sid in requires
                   if len(self.local.study_instance_ids(sid) or ()) < max(1, int(counts.get(sid, 1)))]
        if lacking:
            raise ReceiverError(409, f"not retiring: this node does not hold the corrected stud"
                                     f"{'y' if len(lacking) == 1 else 'ies'} {', '.join(lacking)} yet")
        deleted, foreign, absent = 0, 0, []
        for rid in retire:
            insts = self._instances_of(rid)
            if insts is None:
                absent.append(rid)
                continue
            for iid in insts:
                if self.local.metadata("instances", iid, "HttpUsername") != caller:
                    foreign += 1
                    continue
                if self.local.delete_instance(iid):
                    deleted += 1
        result = {"deleted": deleted, "foreign": foreign, "absent": absent}
        if self.audit is not None:
            self.audit.audit(self.clock(), caller, "retired (correction from downstream)", ",".join(retire)[:2000],
                             reason, {"correction": correction, "requires": requires, **result})
        if foreign:
            self.warning(f"kontur: correction {correction} by {caller}: {foreign} instance(s) not sent by "
                         f"{caller} were left in place")
        return {"kontur": KONTUR, **result}

    def replace(self, instance_id: str | None, reason: str | None, body: bytes | None, caller: str | None,
                reconstruct: bool = False) -> dict:
        if not instance_id or len(instance_id) > 64:
            raise ReceiverError(400, "give the X-Kontur-Instance header: the Orthanc ID of the instance to replace")
        if not reason:
            raise ReceiverError(400, "give the X-Kontur-Reason header: why the copy is replaced")
        if not body:
            raise ReceiverError(400, "the body must be the DICOM instance")
        if caller is None:
            raise ReceiverError(403, "an authenticated peer account is required")
        old = None
        if self.local.exists("instances", instance_id):
            if self.local.metadata("instances", instance_id, "HttpUsername") != caller:
                raise ReceiverError(403, f"instance {instance_id} was not sent by {caller}; not replacing it")
            old = self.local.instance_file(instance_id)
            self.local.delete_instance(instance_id)
        try:
            answer = self.local.store(body)
        except Exception as exc:  # noqa: BLE001 - put the old copy back, then say why
            if old is not None:
                self.local.store(old)
            raise ReceiverError(400, f"the replacement was not stored ({exc}); the old copy is kept") from None
        if answer.get("ID") != instance_id:
            # not the same instance: undo
            try:
                self.local.delete_instance(answer.get("ID"))
            except NotFound:
                pass
            if old is not None:
                self.local.store(old)
            raise ReceiverError(409, f"the replacement is instance {answer.get('ID')}, not {instance_id}; "
                                     "the old copy is kept")
        if reconstruct and answer.get("ParentStudy"):
            self.local.reconstruct(answer["ParentStudy"])
        if self.audit is not None:
            self.audit.audit(self.clock(), caller, "replaced (same UIDs, other content)", instance_id, reason,
                             {"had_copy": old is not None, "reconstructed": bool(reconstruct)})
        return {"kontur": KONTUR, "replaced": instance_id, "had_copy": old is not None}


def answer(status: int, payload: dict) -> tuple[int, bytes]:
    return status, (json.dumps(payload, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
