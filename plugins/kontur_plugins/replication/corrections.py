# SPDX-License-Identifier: AGPL-3.0-or-later
"""Corrections: what the upstream must retire or replace after a correction here.

IOCM in spirit (dcm4chee-arc rejects and replaces): a correction made at this
node reaches the upstream's copy, audited on both sides, in an order that
never leaves the upstream holding neither version, and never leaves a study
there under the wrong patient.

What counts as a correction:

**Orthanc's modify** (``/patients|studies|series/{id}/modify``, e.g. a
PatientID or name fixed after a registration error) makes new resources that
carry ``ModifiedFrom`` (the replaced resource's ID).  Once the replaced study
or series is gone here (``KeepSource: false``, or deleted later), the
upstream must retire its copy.  The new study inherits the old one's
selection (it goes upstream under every policy if the old one went), is
delivered and verified first, and only then does the upstream retire the old
copy (correction ``supersede``).

**The same instance again with other content** (deleted here and received
again with the same UIDs, e.g. a corrected re-send from the modality): the
upstream answers ``AlreadyStored`` and keeps its old copy.  Instances that
arrive for a study already delivered are compared by MD5 with the upstream's
copy and replaced there when they differ (``replace``, by the receiver).

**An operator's rejection** (``POST /kontur/correct`` ``{"action": "reject"}``:
a wrong series, a study of the wrong patient): deleted here and retired
upstream (``reject``).  ``{"action": "sync"}`` retires upstream what a
*divergent* study (see below) no longer has here.

What is *not* a correction: a plain deletion here.  A LAMI that frees its disk,
or a mistaken click, must not empty the region's archive; the full pass marks
such studies divergent and reports them, and an operator decides.

Correction states: ``blocked`` (the replaced resource still exists here),
``waiting`` (for the new study's verified delivery), ``pending`` (due),
``done``, ``refused`` (the upstream refused it for good: kept and visible).
"""
from __future__ import annotations

from typing import Any

from .transport import NoReceiver, RefusedError, TransientError

LEVELS = ("studies", "series")


class Corrections:
    def __init__(self, engine: Any):
        self.e = engine

    # --- Orthanc's modify -----------------------------------------------------------

    def on_ready(self, study_id: str, row: dict) -> bool:
        """A study became ready: if Orthanc's modify made it (or some of its
        series) from resources sent upstream, record what the upstream must
        retire.  Returns True if the study must go upstream because what it
        replaces went there (it inherits the selection)."""
        e = self.e
        inherit = False
        source = e.local.metadata("studies", study_id, "ModifiedFrom")
        if source and source != study_id:
            e.outbox.set_modified_from(study_id, source)
            src_row = e.outbox.get(source)
            if _went_upstream(src_row):
                inherit = True
                self._supersede(study_id, "studies", source,
                                f"study {source} was modified here into {study_id} (Orthanc modify)")
            # corrections that waited for the replaced study now wait for this one
            e.outbox.repoint_corrections(source, study_id)
            return inherit
        info = e.local.study(study_id) or {}
        for series_id in info.get("Series", []):
            src = e.local.metadata("series", series_id, "ModifiedFrom")
            if not src or src == series_id:
                continue
            if _went_upstream(row) or _went_upstream(e.outbox.get(self._study_of_series(src) or "")):
                inherit = True
                self._supersede(study_id, "series", src,
                                f"series {src} was modified here into {series_id} (Orthanc modify)")
        return inherit

    def _study_of_series(self, series_id: str) -> str | None:
        s = self.e.local.series(series_id)
        return s.get("ParentStudy") if s else None

    def _supersede(self, study_id: str, level: str, source: str, reason: str) -> None:
        e = self.e
        for c in e.outbox.corrections_of(study_id):
            if source in c["retire"]:
                return                                  # recorded already (the study was ready before)
        blocked = e.local.exists(level, source)
        row = e.outbox.get(study_id) or {}
        delivered = row.get("state") == "delivered"
        cid = e.outbox.add_correction(e.clock(), kind="supersede", study_id=study_id, retire=[source],
                                      requires=[study_id], reason=reason, actor="orthanc-modify",
                                      due=delivered and not blocked)
        if blocked:
            e.outbox.set_correction_state(cid, "blocked")
        e.log.info(f"kontur replication: correction {cid}: {reason}; the upstream retires {source} "
                   + ("once it is deleted here" if blocked else f"once {study_id} is delivered"))

    def on_deleted(self, level: str, resource_id: str) -> None:
        """Orthanc deleted a resource here (the OnChange callback; lost on a crash,
        so :meth:`check_blocked` looks again)."""
        for c in self.e.outbox.blocked_corrections(resource_id):
            self._unblock(c)

    def check_blocked(self) -> int:
        """Blocked corrections whose replaced resource is gone here now."""
        e = self.e
        n = 0
        for c in e.outbox.corrections(["blocked"]):
            if not any(e.local.exists(level, rid) for rid in c["retire"] for level in LEVELS):
                self._unblock(c)
                n += 1
        return n

    def _unblock(self, c: dict) -> None:
        e = self.e
        row = e.outbox.get(c["study_id"]) or {}
        due = row.get("state") == "delivered"
        e.outbox.set_correction_state(c["id"], "pending" if due else "waiting")
        if not due and row.get("state") != "pending":
            # the new study must go upstream before the old copy is retired there
            e.admit(e.outbox.ensure(c["study_id"], e.clock()), f"correction {c['id']}: replaces what went upstream",
                    urgent=False, source="correction")
        e.wake_sender.set()

    # --- after delivery ------------------------------------------------------------------

    def on_delivered(self, study_id: str) -> None:
        if self.e.outbox.release_corrections(study_id, self.e.clock()):
            self.e.wake_sender.set()

    def on_divergent(self, study_id: str, extra: tuple[str, ...]) -> None:
        """The full pass found the upstream holding instances deleted here."""
        self.e.log.warning(f"kontur replication: study {study_id}: the upstream holds {len(extra)} instance(s) "
                           "no longer held here; not deleted there (POST /kontur/correct "
                           '{"action": "sync"} retires them if this was a correction)')

    # --- operators ---------------------------------------------------------------------

    def reject(self, level: str, resource_id: str, reason: str, actor: str | None) -> dict:
        """Delete a wrong study or series here and retire it upstream."""
        e = self.e
        if level == "studies":
            study_id = resource_id
            if e.local.study(study_id) is None:
                raise LookupError(f"study {resource_id} is not in this archive")
        else:
            study_id = self._study_of_series(resource_id)
            if study_id is None:
                raise LookupError(f"series {resource_id} is not in this archive")
        row = e.outbox.get(study_id)
        cid = None
        if _went_upstream(row) or e.cfg.gateway:
            cid = e.outbox.add_correction(e.clock(), kind="reject", study_id=study_id, retire=[resource_id],
                                          requires=[], reason=reason, actor=actor, due=True)
        e.outbox.audit(e.clock(), actor, f"rejected here ({level})", resource_id, reason,
                       {"study": study_id, "correction": cid})
        e.local.delete(level, resource_id)
        e.log.warning(f"kontur replication: {level[:-1] if level == 'studies' else 'series'} {resource_id} rejected "
                      f"by {actor or 'an operator'}" + (f"; correction {cid} retires it upstream" if cid else ""))
        e.wake_sender.set()
        return {"rejected": resource_id, "study": study_id, "correction": cid,
                "upstream": "queued" if cid else "never sent there"}

    def sync(self, study_id: str, reason: str, actor: str | None) -> dict:
        """Retire upstream what a divergent study no longer holds here."""
        e = self.e
        local_ids = e.local.study_instance_ids(study_id)
        if not local_ids:
            raise LookupError(f"study {study_id} is not in this archive")
        remote_ids = e.upstream.study_instance_ids(study_id)
        extra = sorted(remote_ids - local_ids)
        if not extra:
            e.outbox.set_divergent(study_id, 0)
            return {"study": study_id, "correction": None, "extra": 0}
        cid = e.outbox.add_correction(e.clock(), kind="sync", study_id=study_id, retire=extra,
                                      requires=[study_id], reason=reason, actor=actor, due=True)
        e.wake_sender.set()
        return {"study": study_id, "correction": cid, "extra": len(extra)}

    # --- applying them upstream -------------------------------------------------------------

    def apply_next(self, now: float) -> bool:
        """Apply the next due correction upstream; False if none is due."""
        e = self.e
        c = e.outbox.next_correction(now)
        if c is None:
            return False
        try:
            counts = {sid: int((e.outbox.get(sid) or {}).get("delivered_count") or 1) for sid in c["requires"]}
            result = e.upstream.retire(retire=c["retire"], requires=c["requires"], reason=c["reason"],
                                       correction=f"{e.cfg.node}/{c['id']}", requires_instances=counts)
            e.link.succeeded()
        except TransientError as exc:
            wait = e.link.failed(now, str(exc))
            e.outbox.correction_failed(c["id"], now, str(exc), now + wait)
            e.log.warning(f"kontur replication: correction {c['id']}: {exc}; next try in {wait:.0f} s")
            return True
        except (RefusedError, NoReceiver) as exc:
            msg = (f"{e.cfg.upstream.name} has no kontur receiver to apply corrections" if isinstance(exc, NoReceiver)
                   else f"{e.cfg.upstream.name} refused it: {exc}")
            e.outbox.correction_failed(c["id"], now, msg, None)
            e.log.error(f"kontur replication: correction {c['id']} ({c['kind']}, {c['reason']}): {msg}")
            return True
        res = {k: result.get(k) for k in ("deleted", "absent", "foreign") if k in result}
        e.outbox.correction_done(c["id"], e.clock(), res)
        e.log.warning(f"kontur replication: correction {c['id']} applied at {e.cfg.upstream.name}: {c['reason']} "
                      f"({res.get('deleted', 0)} instance(s) retired)")
        return True

    # --- same UIDs, other content ---------------------------------------------------------------

    def recheck(self, study_id: str, local_ids: set[str], remote_ids: set[str]) -> int:
        """Instances that arrived again for a delivered study and that the upstream
        already lists: replace the upstream's copy where the content differs."""
        e = self.e
        ids = sorted(e.outbox.rechecks(study_id) & local_ids & remote_ids)
        if not ids:
            return 0
        try:
            theirs = e.upstream.md5s(ids)
        except NoReceiver:
            e.log.warning(f"kontur replication: study {study_id}: {len(ids)} instance(s) arrived again here; "
                          f"{e.cfg.upstream.name} has no kontur receiver to compare their content")
            return 0
        replaced = 0
        differ = [iid for iid in ids if (mine := e.local.instance_md5(iid)) is not None
                  and theirs.get(iid) not in (None, mine)]
        for k, iid in enumerate(differ):
            mine = e.local.instance_md5(iid)
            data = e.local.instance_file(iid)
            if data is None:
                continue
            reason = "the same instance arrived here again with other content"
            try:
                e.upstream.replace_instance(data, instance_id=iid, reason=reason, reconstruct=k == len(differ) - 1)
            except RefusedError as exc:
                raise RefusedError(f"replacing its copy of instance {iid}: {exc}") from None
            e.outbox.audit(e.clock(), "kontur", "replaced upstream", iid, reason,
                           {"study": study_id, "md5_before": theirs.get(iid), "md5_after": mine})
            replaced += 1
        if replaced:
            e.log.warning(f"kontur replication: study {study_id}: {replaced} instance(s) replaced at "
                          f"{e.cfg.upstream.name} (same UIDs, other content)")
        return replaced


def _went_upstream(row: dict | None) -> bool:
    """Was this study sent upstream (or is it meant to be)?"""
    return bool(row and (row.get("delivered_at") or row.get("selected") or row.get("state") == "delivered"))
