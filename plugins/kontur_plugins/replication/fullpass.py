# SPDX-License-Identifier: AGPL-3.0-or-later
"""The full pass: every study held here compared by instance *set* with the upstream.

The safety net under the change feed (events can be lost, a log can restart,
an upstream can lose files):

1. **Work list.**  At the start of a pass the IDs of every study held here are
   read into ``fullpass_todo`` in the outbox, in ten-odd overlapping chunks of
   Orthanc's listing (one answer of 183k IDs costs Orthanc ~70 MB to build).
2. **Keyset pages.**  The pass walks that list in primary-key order,
   ``full_pass_page`` studies at a time, after the last ID done -- never
   ``OFFSET`` paging, which on the PostgreSQL index re-sorts every study for
   every page.  After each page the cursor and the counts are committed, so a
   pass interrupted by an error or a restart resumes where it stopped.
3. **Digests.**  Per page, the upstream's receiver answers (count, digest of
   the sorted instance IDs) for every candidate from its index, without
   opening a file (DICOMweb's QIDO reads one file per study for its counts).
   The local digest comes from the outbox when the study is unchanged since
   it was verified (``LastUpdate``), else from one listing.  Only where the
   digests differ are both sides listed and compared as sets:

   - instances here that the upstream lacks: the study is queued again;
   - instances only upstream (deleted here): the study is marked *divergent*
     and reported, never deleted upstream by itself -- a LAMI freeing its disk
     must not empty the region's archive; corrections retire what was replaced.

Everything the pass does is visible: start, progress, the last completion and
the last error are in ``/kontur/replication``, its metrics and
``kontur replication status``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import decisions, reconcile
from .local import study_keys


class FullPass:
    META = "full_pass"

    def __init__(self, engine: Any):
        self.e = engine

    # --- state ------------------------------------------------------------------

    def state(self) -> dict:
        return self.e.outbox.get_meta_json(self.META) or {}

    def _save(self, st: dict) -> None:
        self.e.outbox.set_meta_json(self.META, st)

    def running(self) -> bool:
        return self.state().get("state") in ("running", "requested")

    def request(self, trigger: str) -> None:
        """Start a pass as soon as the full-pass thread can (feed reset, operator)."""
        st = self.state()
        if st.get("state") == "running":
            st["again"] = trigger                  # one more right after this one
        else:
            st.update(state="requested", trigger=trigger, requested_at=self.e.clock())
        self._save(st)

    def public(self, now: float) -> dict | None:
        st = self.state()
        if not st:
            return None
        out = {k: st.get(k) for k in ("pass", "state", "trigger", "started_at", "finished_at", "total", "done",
                                      "stats", "last_error", "last_completed", "requested_at")}
        if st.get("state") == "running" and st.get("total"):
            out["progress"] = round((st.get("done") or 0) / st["total"], 4)
        return out

    # --- the pass -------------------------------------------------------------------

    def run(self, trigger: str = "schedule") -> dict:
        """Run (or resume) one pass to its end; returns its statistics.
        Raises on an error after recording it (the pass resumes next time)."""
        e = self.e
        st = self.state()
        if st.get("state") != "running":
            ids = e.local.all_study_ids()
            n = e.outbox.fullpass_fill(ids)
            del ids
            st = {"pass": int(st.get("pass") or 0) + 1, "state": "running",
                  "trigger": st.get("trigger") if st.get("state") == "requested" else trigger,
                  "started_at": e.clock(), "finished_at": None, "cursor": "", "total": n, "done": 0,
                  "stats": _zero_stats(), "last_error": None, "last_completed": st.get("last_completed"),
                  "again": None, "resumed": 0}
            self._save(st)
        else:
            st["resumed"] = int(st.get("resumed") or 0) + 1
            self._save(st)
        page_size = int(e.cfg.t("full_pass_page"))
        pause = e.cfg.t("full_pass_pause_seconds")
        try:
            while not e.stop_event.is_set():
                ids = e.outbox.fullpass_page(st["cursor"], page_size)
                if not ids:
                    break
                self._page(ids, st["stats"])
                st["cursor"] = ids[-1]
                st["done"] = int(st.get("done") or 0) + len(ids)
                self._save(st)
                if pause:
                    e.stop_event.wait(pause)
        except Exception as exc:
            st["last_error"] = {"at": e.clock(), "message": f"{type(exc).__name__}: {exc}", "cursor": st["cursor"]}
            self._save(st)
            raise
        if e.stop_event.is_set():
            return st["stats"]
        st["state"] = "done"
        st["finished_at"] = e.clock()
        st["last_completed"] = {"pass": st["pass"], "started_at": st["started_at"], "finished_at": st["finished_at"],
                                "total": st["total"], "stats": st["stats"], "trigger": st["trigger"]}
        again = st.pop("again", None)
        if again:
            st.update(state="requested", trigger=again, requested_at=e.clock())
        self._save(st)
        e.outbox.fullpass_clear()
        s = st["stats"]
        if s["requeued"] or s["divergent"]:
            e.log.warning(f"kontur replication: full pass {st['pass']}: {s['requeued']} stud"
                          f"{'y' if s['requeued'] == 1 else 'ies'} queued again (the upstream lacked instances), "
                          f"{s['divergent']} divergent (the upstream holds instances deleted here)")
        return s

    def _page(self, ids: list[str], stats: dict) -> None:
        e = self.e
        rows = e.outbox.get_many(ids)
        cands: list[tuple[str, str, str, dict | None, tuple[int, str] | None, str | None]] = []
        for sid in ids:
            row = rows.get(sid)
            info = e.local.study(sid)
            stats["studies"] += 1
            if info is None:
                continue                                   # deleted here since the list was read
            uid, pid = study_keys(info)
            state = row["state"] if row else None
            if state == "held":
                e.admit(row, "full pass: gate re-checked", urgent=False, source="full-pass")
                stats["held_rechecked"] += 1
                continue
            if state in ("pending", "parked") or (row and row["awaiting_stable"]):
                continue
            if row is None and info.get("IsStable") is False:
                # still arriving (the feed started after its first instances): it waits
                # for stability as any new study, never sent half received
                e.outbox.ensure(sid, e.clock(), uid, pid)
                e.outbox.touch(sid, e.clock())
                stats["arriving"] += 1
                continue
            if not decisions.in_full_pass(e.cfg.mode, e.cfg.gateway, bool(row and row["selected"]),
                                          e.outbox.is_flagged(uid)):
                continue
            if uid is None:
                continue
            last_update = info.get("LastUpdate")
            cands.append((sid, uid, pid or "", row, reconcile.known_local_digest(row, last_update), last_update))
        if not cands:
            return
        remote = e.counter.digests([c[0] for c in cands])
        stats["compared"] += len(cands)
        verified: list[tuple] = []
        for sid, uid, pid, row, known, last_update in cands:
            r_count, r_digest = remote.get(sid, (0, reconcile.EMPTY_DIGEST))
            if known is not None and known[1] == r_digest:
                stats["equal"] += 1
                continue
            local_ids = e.local.study_instance_ids(sid)
            stats["listed_locally"] += 1
            if not local_ids:
                continue
            l_digest = reconcile.set_digest(local_ids)
            if l_digest == r_digest:
                verified.append((sid, len(local_ids), last_update, l_digest))
                stats["equal"] += 1
                continue
            remote_ids = e.counter.study_instance_ids(sid) if r_count else set()
            stats["listed_upstream"] += 1 if r_count else 0
            cmp = reconcile.compare_sets(sid, local_ids, remote_ids)
            if cmp.missing:
                row = e.outbox.ensure(sid, e.clock(), uid, pid)
                state = e.admit(row, f"full pass: {e.cfg.upstream.name} holds {len(local_ids) - len(cmp.missing)} "
                                     f"of {len(local_ids)} instances", urgent=False, source="full-pass")
                if state == "pending":
                    stats["requeued"] += 1
                continue
            # the upstream holds everything held here, and more
            extra = 0 if e.cfg.gateway else len(cmp.extra)
            e.outbox.record_verified(sid, e.clock(), len(local_ids), last_update, l_digest, divergent=extra)
            if extra:
                stats["divergent"] += 1
                e.corrections.on_divergent(sid, cmp.extra)
            else:
                stats["equal"] += 1
        if verified:
            # one commit (one fsync) for the page, not one per study
            with e.outbox.transaction():
                for sid, count, last_update, digest in verified:
                    e.outbox.record_verified(sid, e.clock(), count, last_update, digest)


def _zero_stats() -> dict:
    return {"studies": 0, "compared": 0, "equal": 0, "listed_locally": 0, "listed_upstream": 0, "requeued": 0,
            "divergent": 0, "held_rechecked": 0, "arriving": 0}


def loop(engine: Any, sleep: Callable[[float], bool]) -> None:
    """The full-pass thread: resume a pass left running, run one when due
    (first after ``full_pass_first_delay_seconds``, then every
    ``full_pass_interval_seconds``) or when requested; after an error, try
    again with backoff (the pass resumes where it stopped)."""
    from . import backoff
    e = engine
    fp = e.full_pass
    t = e.cfg.tuning
    st = fp.state()
    resuming = st.get("state") in ("running", "requested")
    first = min(t["full_pass_first_delay_seconds"], 60.0) if resuming else t["full_pass_first_delay_seconds"]
    if e.full_pass_wake.wait(first) and e.stop_event.is_set():
        return
    failures = 0
    while not e.stop_event.is_set():
        e.full_pass_wake.clear()
        try:
            fp.run()
            failures = 0
        except Exception as exc:  # noqa: BLE001 - recorded in the pass's state; resumed later
            failures += 1
            e.log.warning(f"kontur replication: full pass stopped, will resume: {exc}")
            wait = backoff.delay(failures, t["retry_base_seconds"], t["retry_factor"], t["retry_max_seconds"])
            if sleep(wait):
                return
            continue
        if e.stop_event.is_set():
            return
        if fp.state().get("state") == "requested":
            continue
        e.full_pass_wake.wait(t["full_pass_interval_seconds"])
