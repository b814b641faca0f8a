# SPDX-License-Identifier: AGPL-3.0-or-later
"""The replicator: its threads, the send/verify loop, and what it shows.

Three worker threads, started when Orthanc has started and joined when it
stops (never inside an Orthanc callback):

``kontur-changes``   reads /changes from the saved position, at least once
                     (``feed``), woken at once by the OnChange callback;
                     marks touched studies, turns StableStudy (or a quiet
                     period after a lost event) into policy decisions
``kontur-sender``    takes the next due study (urgent first, then due
                     corrections, then the oldest), sends what the upstream
                     lacks, paced to the cap, verifies, then gateway
                     deletions when due
``kontur-fullpass``  compares every study's instance set with the upstream
                     (``fullpass``), resumable, every
                     ``full_pass_interval_seconds`` and at once after the
                     change log restarted

Every per-study step is wrapped: an exception is logged with the study ID and
counted as a failed attempt (retried with backoff); it never reaches Orthanc.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..pipeline import Gate, PassGate, StudyRef, run_gates
from . import backoff, decisions, fullpass, reconcile, windows
from .config import ReplicationConfig
from .corrections import Corrections
from .feed import ChangeFeed, FeedError
from .local import LocalArchive, StorageLost, is_orthanc_id, study_keys
from .outbox import Outbox
from .pacing import Pacer
from .transport import Aborted, NoReceiver, RefusedError, TransientError, UpstreamClient


class BadRequest(ValueError):
    """A request the API answers with 400."""


class UnknownStudy(LookupError):
    """A request naming something this archive does not hold (404)."""


class Log:
    """Where the replicator writes; the glue maps these to orthanc.Log*.

    With ``deidentify`` (Orthanc's ``DeidentifyLogs``, on in kontur's baseline)
    patient IDs and DICOM UIDs never reach a log line: :meth:`ident` turns them
    into a short HMAC under a key kept in this node's outbox, so one line can
    still be matched to another, but a short PatientID cannot be guessed back
    from the log alone.  (Orthanc IDs are hashes already and stay as they are.)"""

    def __init__(self, info: Callable[[str], Any] = print, warning: Callable[[str], Any] = print,
                 error: Callable[[str], Any] = print, *, deidentify: bool = False):
        self.info, self.warning, self.error = info, warning, error
        self.deidentify = deidentify
        self.key = b""

    def ident(self, value: str | None) -> str:
        if value is None:
            return "?"
        if not self.deidentify or is_orthanc_id(value):
            return value
        return "~" + hmac.new(self.key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:12]


class Replicator:
    def __init__(self, cfg: ReplicationConfig, local: LocalArchive, outbox: Outbox, *,
                 upstream_factory: Callable[[Pacer | None], Any] | None = None, stable_age: float = 60.0,
                 log: Log | None = None, clock: Callable[[], float] = time.time,
                 gates: list[Gate] | None = None, urgent_of: Callable[[dict], str | None] | None = None,
                 completed_of: Callable[[list[str]], set[str]] | None = None):
        self.cfg = cfg
        #: a study's urgency from outside replication (the MIS's STAT order it was made for): the
        #: reason to send it in the urgent lane under every policy, or None
        self.urgent_of = urgent_of
        #: which of these Study Instance UIDs their devices reported COMPLETED (MPPS): those are ready
        #: after ``mpps_settle_seconds`` of quiet instead of StableAge; and the studies made ready so,
        #: whose later StableStudy event is then not a second decision
        self.completed_of = completed_of
        self._ready_by_mpps: set[str] = set()
        self._pruned_at = float("-inf")
        self.local = local
        self.outbox = outbox
        self.stable_age = float(stable_age)
        self.log = log or Log()
        self.clock = clock
        self.gates: list[Gate] = list(gates) if gates is not None else [PassGate()]
        self.stop_event = threading.Event()
        self.wake_changes = threading.Event()
        self.wake_sender = threading.Event()
        self.full_pass_wake = threading.Event()
        self.preempt = threading.Event()
        t = cfg.tuning
        self.link = backoff.LinkBackoff(t["retry_base_seconds"], t["retry_factor"], t["retry_max_seconds"],
                                        t["link_probe_seconds"])
        cap = cfg.cap_bytes_per_second
        self.pacer = Pacer(cap * t["pacing_fraction"] if cap else None, burst_bytes=int(t["chunk_bytes"]),
                           sleep=self._sleep)
        self._factory = upstream_factory or self._default_upstream
        # one connection per thread: the sender (paced) and the full pass (small queries)
        self.upstream = self._factory(self.pacer)
        self.counter = self._factory(None)
        self._lock = threading.Lock()
        self._in_flight: dict | None = None
        self._threads: list[threading.Thread] = []
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kontur-prefetch")
        self._deleted: collections.deque[tuple[str, str]] = collections.deque(maxlen=100000)
        self.feed = ChangeFeed(local, outbox, self.handle_change, clock=clock, batch=int(t["changes_batch"]),
                               retry=(t["changes_poll_seconds"], 2.0, t["retry_max_seconds"]),
                               on_reset=self._feed_reset, log_info=self.log.info, log_warning=self.log.warning)
        self.full_pass = fullpass.FullPass(self)
        self.corrections = Corrections(self)
        self.started_at = clock()
        #: more sections of status(), from the other stages (name -> callable returning a dict)
        self.extra_status: dict[str, Callable[[], dict]] = {}
        #: checks right before a study's first instance goes (the link is up, the upstream
        #: holds none of it): (outbox row, upstream client) -> a reason to hold it, or None
        self.presend: list[Callable[[dict, Any], str | None]] = [
            g.presend for g in self.gates if hasattr(g, "presend")]
        if self.log.deidentify:
            key = outbox.get_meta("log_key")
            if key is None:
                key = secrets.token_hex(16)
                outbox.set_meta("log_key", key)
            self.log.key = bytes.fromhex(key)

    # ------------------------------------------------------------------ life cycle

    def _default_upstream(self, pacer: Pacer | None) -> UpstreamClient:
        t = self.cfg.tuning
        return UpstreamClient(self.cfg.upstream, timeout=t["http_timeout_seconds"],
                              chunk_bytes=int(t["chunk_bytes"]), pacer=pacer)

    def _sleep(self, seconds: float) -> None:
        self.stop_event.wait(seconds)

    def start(self) -> None:
        self.stop_event.clear()
        for name, target in (("kontur-changes", self._changes_loop),
                             ("kontur-sender", self._sender_loop),
                             ("kontur-fullpass", self._full_pass_loop)):
            th = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
            th.start()
            self._threads.append(th)
        self.log.info(f"kontur replication: started ({self.describe()})")

    def stop(self, timeout: float = 15.0) -> None:
        self.stop_event.set()
        self.wake_changes.set()
        self.wake_sender.set()
        self.full_pass_wake.set()
        self.upstream.abort()
        self.counter.abort()
        deadline = time.monotonic() + timeout
        for th in self._threads:
            th.join(max(0.1, deadline - time.monotonic()))
        alive = [th.name for th in self._threads if th.is_alive()]
        if alive:
            self.log.warning(f"kontur replication: threads still busy at stop: {', '.join(alive)}")
        self._threads = []
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self.upstream.close()
        self.counter.close()

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self.stop_event.is_set():
                try:
                    target()
                    return
                except Exception as exc:  # noqa: BLE001 - a thread must not die silently
                    self.log.error(f"kontur replication: {name} failed, restarting it in 5 s: {exc!r}\n"
                                   f"{traceback.format_exc()}")
                    self.outbox_error(None, f"{name}: {exc!r}")
                    self.stop_event.wait(5)
        return run

    def notify(self) -> None:
        """From Orthanc's OnChange callback: never blocks."""
        self.wake_changes.set()

    def notify_deleted(self, level: str, resource_id: str) -> None:
        """From Orthanc's OnChange callback (DELETED, which /changes never shows):
        handled by the changes thread; never blocks."""
        self._deleted.append((level, resource_id))
        self.wake_changes.set()

    def describe(self) -> str:
        up = self.cfg.upstream
        mode = "gateway (forward everything)" if self.cfg.gateway else f"policy {self.cfg.mode}"
        cap = f"{self.cfg.bandwidth_mbit:g} Mbit/s" if self.cfg.bandwidth_mbit else "no cap"
        return (f"{mode}, upstream {up.name} {up.url}, windows {windows.describe(self.cfg.windows, self.cfg.timezone)}, "
                f"{cap}")

    def outbox_error(self, study_id: str | None, message: str) -> None:
        try:
            self.outbox.record_error(self.clock(), study_id, message)
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ loops

    def _changes_loop(self) -> None:
        poll = self.cfg.t("changes_poll_seconds")
        coalesce = self.cfg.t("changes_coalesce_seconds")
        last_read = float("-inf")
        # read at once, not at the first change or poll: a first start records where
        # /changes ends before the node's first study, a restart catches up at once
        self.wake_changes.set()
        while not self.stop_event.is_set():
            now = self.clock()
            wait = poll if self.feed.ready(now) else max(0.05, min(poll, self.feed.next_try - now))
            self.wake_changes.wait(wait)
            # a burst of instances wakes this thread once per instance: gather them
            # into one read (and one commit) rather than one per instance
            since = time.monotonic() - last_read
            if since < coalesce:
                self.stop_event.wait(coalesce - since)
            self.wake_changes.clear()
            if self.stop_event.is_set():
                break
            last_read = time.monotonic()
            if not self.feed.ready(self.clock()):
                continue
            try:
                self.process_changes()
            except FeedError as exc:
                self.log.error(f"kontur replication: {exc}")
            except Exception as exc:  # noqa: BLE001
                self.log.error(f"kontur replication: reading /changes failed: {exc!r}\n{traceback.format_exc()}")
                self.feed._failed(None, f"reading /changes failed: {exc!r}")
            try:
                self.process_deleted()
                self.sweep_quiet()
                self.prune()
            except Exception as exc:  # noqa: BLE001
                self.log.error(f"kontur replication: {exc!r}\n{traceback.format_exc()}")
                self.outbox_error(None, repr(exc))

    def _sender_loop(self) -> None:
        idle = self.cfg.t("idle_poll_seconds")
        while not self.stop_event.is_set():
            worked = False
            try:
                if self.cfg.gateway:
                    self.housekeeping()
                worked = self.send_next()
            except Exception as exc:  # noqa: BLE001
                self.log.error(f"kontur replication: sender: {exc!r}\n{traceback.format_exc()}")
                self.outbox_error(None, f"sender: {exc!r}")
            if worked:
                continue
            self.wake_sender.wait(self._idle_wait(idle))
            self.wake_sender.clear()

    def _idle_wait(self, idle: float) -> float:
        now = self.clock()
        waits = [idle]
        nxt = self.outbox.next_attempt_time()
        if nxt is not None and nxt > now:
            waits.append(nxt - now)
        if not self.link.ready(now):
            waits.append(self.link.next_wake(now) - now)
        return max(0.05, min(waits))

    def _full_pass_loop(self) -> None:
        fullpass.loop(self, self.stop_event.wait)

    # ------------------------------------------------------------------ changes

    def process_changes(self) -> int:
        """Read /changes from the saved position; returns how many were read.
        Raises :class:`FeedError` if a change failed (the position stays before it)."""
        n = self.feed.step()
        # wake the sender only now: it cannot see what a transaction queued before the commit
        self.wake_sender.set()
        return n

    def handle_change(self, kind: str, resource_id: str, seq: int) -> None:
        """One change of the feed, inside its transaction; raises on failure."""
        if kind == "NewInstance":
            self._on_new_instance(resource_id)
        elif resource_id in self._ready_by_mpps:
            self._ready_by_mpps.discard(resource_id)
            row = self.outbox.get(resource_id)
            if row is None or row.get("awaiting_stable"):
                self._on_ready(resource_id, "stable")
        else:
            self._on_ready(resource_id, "stable")

    def _feed_reset(self, reason: str) -> None:
        self.full_pass.request(f"the change feed was reset: {reason}")
        self.full_pass_wake.set()

    def process_deleted(self) -> int:
        n = 0
        while self._deleted:
            level, rid = self._deleted.popleft()
            self.corrections.on_deleted(level, rid)
            n += 1
        return n

    def _on_new_instance(self, instance_id: str) -> None:
        study_id = self.local.parent_study(instance_id)
        if study_id is None:
            return                      # deleted meanwhile
        self._ready_by_mpps.discard(study_id)
        row = self.outbox.get(study_id)
        if row is None or row.get("study_uid") is None:
            info = self.local.study(study_id)
            uid, pid = study_keys(info) if info else (None, None)
            row = self.outbox.ensure(study_id, self.clock(), uid, pid)
        if row.get("delivered_at"):
            # the study went upstream before: if the upstream lists this instance
            # already, its content is compared when the study goes again
            self.outbox.add_recheck(instance_id, study_id, self.clock())
        self.outbox.touch(study_id, self.clock())

    def _ensure_keys(self, study_id: str) -> dict | None:
        row = self.outbox.get(study_id)
        if row is not None and row.get("study_uid"):
            return row
        info = self.local.study(study_id)
        if info is None:
            return row
        uid, pid = study_keys(info)
        return self.outbox.ensure(study_id, self.clock(), uid, pid)

    def _stable_here(self, study_id: str) -> bool:
        """Orthanc's own word (IsStable) on a study the outbox knows nothing of yet."""
        info = self.local.study(study_id)
        return info is None or info.get("IsStable") is not False

    def _on_ready(self, study_id: str, source: str) -> str:
        """A study is complete (Orthanc's StableStudy or a quiet period)."""
        now = self.clock()
        if self._ensure_keys(study_id) is None:
            return "gone"               # deleted before it was ready
        row = self.outbox.mark_stable(study_id, now)
        if row["state"] == "parked":
            return "parked"
        inherited = self.corrections.on_ready(study_id, row)
        urgent = self._urgent_reason(row)
        if urgent:
            return self.admit(row, urgent if source == "stable" else f"{urgent} ({source})", urgent=True,
                              source=source)
        d = decisions.on_ready(self.cfg.mode, self.cfg.gateway, bool(row["selected"]) or inherited,
                               self.outbox.is_flagged(row.get("study_uid")))
        if not d.send:
            return "idle"
        why = d.reason if not inherited or row["selected"] else "a correction of a study sent upstream"
        why = why if source == "stable" else f"{why} ({source})"
        return self.admit(row, why, urgent=False, source=source)

    def _urgent_reason(self, row: dict) -> str | None:
        if self.urgent_of is None or not row.get("study_uid"):
            return None
        try:
            return self.urgent_of(row)
        except Exception as exc:  # noqa: BLE001 - never lose the study over its urgency
            self.log.warning(f"kontur replication: study {row['study_id']}: its order's priority is unknown: {exc!r}")
            return None

    def admit(self, row: dict, reason: str, *, urgent: bool, source: str, unpark: bool = False) -> str:
        """Gates, then the outbox."""
        ref = StudyRef(row["study_id"], row.get("study_uid"), row.get("patient_id"), urgent, source)
        hold = run_gates(self.gates, ref)
        now = self.clock()
        if hold:
            self.outbox.hold(row["study_id"], now, hold)
            # the reasons may carry a patient's data: they stay in the outbox and the API
            self.log.info(f"kontur replication: study {row['study_id']} held by {hold.split(':')[0]}")
            return "held"
        state = self.outbox.enqueue(row["study_id"], now, reason, urgent=urgent, unpark=unpark)
        if state == "pending":
            if urgent:
                self.preempt.set()
            self.wake_sender.set()
        return state

    def prune(self) -> int:
        """Hourly: the studies' events past ``events_keep_seconds``."""
        now = self.clock()
        if now - self._pruned_at < 3600:
            return 0
        self._pruned_at = now
        return self.outbox.prune_events(now - self.cfg.t("events_keep_seconds"))

    def sweep_quiet(self) -> int:
        """Studies quiet for StableAge + grace without a StableStudy event."""
        quiet = self.stable_age + self.cfg.t("stable_grace_seconds")
        rows = self.outbox.quiet(self.clock(), quiet)
        for row in rows:
            try:
                self._on_ready(row["study_id"], f"quiet for {quiet:g} s, no stable event seen")
            except Exception as exc:  # noqa: BLE001
                self.log.error(f"kontur replication: study {row['study_id']}: {exc!r}")
        return len(rows) + self.sweep_completed()

    def sweep_completed(self) -> int:
        """Studies quiet for ``mpps_settle_seconds`` whose device reported the
        procedure step COMPLETED (MPPS): ready now rather than after StableAge.
        Instances that come later touch the study again, as after any send."""
        if self.completed_of is None:
            return 0
        rows = [r for r in self.outbox.quiet(self.clock(), self.cfg.t("mpps_settle_seconds")) if r.get("study_uid")]
        if not rows:
            return 0
        try:
            done = self.completed_of([r["study_uid"] for r in rows])
        except Exception as exc:  # noqa: BLE001 - then StableAge decides, as without MPPS
            self.log.warning(f"kontur replication: the devices' MPPS is unknown: {exc!r}")
            return 0
        n = 0
        for row in rows:
            if row["study_uid"] in done:
                self._ready_by_mpps.add(row["study_id"])
                try:
                    self._on_ready(row["study_id"], "its device reported the procedure COMPLETED (MPPS)")
                    n += 1
                except Exception as exc:  # noqa: BLE001
                    self.log.error(f"kontur replication: study {row['study_id']}: {exc!r}")
        return n

    # ------------------------------------------------------------------ operator requests

    def request(self, *, study: str | None = None, patient: str | None = None, urgent: bool = False,
                source: str = "operator") -> list[dict]:
        """Push one study (Orthanc ID or StudyInstanceUID) or all of a patient's
        studies, in any mode; a parked study is given another chance."""
        if (study is None) == (patient is None):
            raise BadRequest('give exactly one of "study" or "patient"')
        if study is not None:
            ids = self.local.resolve_study(study)
            what = f"study {self.log.ident(study)}"
        else:
            ids = self.local.patient_studies(patient)
            what = f"patient {self.log.ident(patient)}"
        if not ids:
            raise UnknownStudy(f"{'study ' + study if study is not None else 'patient ' + patient} "
                               "is not in this archive")
        out = []
        for sid in ids:
            row = self._ensure_keys(sid) or self.outbox.ensure(sid, self.clock())
            reason = f"{source} push" + (" (urgent)" if urgent else "")
            if urgent:
                self.link.succeeded()       # an operator says "now": do not wait out the backoff
            state = self.admit(row, reason, urgent=urgent, source=source, unpark=True)
            out.append({"study": sid, "study_uid": row.get("study_uid"), "patient_id": row.get("patient_id"),
                        "state": state, "urgent": urgent})
        self.log.info(f"kontur replication: {source} queued {what}: {len(out)} stud{'y' if len(out) == 1 else 'ies'}"
                      f"{' (urgent)' if urgent else ''}")
        return out

    def release_parked(self, *, actor: str | None = None, reason: str = "operator released the parked studies") -> list[dict]:
        """Give every parked study another try (after the cause was fixed upstream)."""
        rows = self.outbox.parked()
        out = []
        for r in rows:
            row = self.outbox.get(r["study_id"])
            if row is None:
                continue
            state = self.admit(row, f"released from parked: {reason}", urgent=False, source="operator", unpark=True)
            out.append({"study": r["study_id"], "study_uid": r.get("study_uid"), "state": state,
                        "was": r.get("reason")})
        self.outbox.audit(self.clock(), actor, "released parked studies", None, reason,
                          {"studies": [o["study"] for o in out]})
        self.log.warning(f"kontur replication: {actor or 'an operator'} released {len(out)} parked stud"
                         f"{'y' if len(out) == 1 else 'ies'}")
        return out

    def flag(self, study: str, pathology: bool = True, source: str = "rest") -> dict:
        """Flag (or unflag) a study as pathology; under the pathology policy a
        flagged study goes once it is stable."""
        if not isinstance(study, str) or not study:
            raise BadRequest('"study" must be a StudyInstanceUID or an Orthanc study ID')
        now = self.clock()
        if is_orthanc_id(study):
            info = self.local.study(study)
            if info is None:
                raise UnknownStudy(f"study {study} is not in this archive")
            uid, _ = study_keys(info)
            ids = [study]
        else:
            uid = study
            ids = self.local.resolve_study(study)
        self.outbox.set_flag(uid, pathology, now, source)
        results = []
        for sid in ids:
            row = self._ensure_keys(sid)
            if not pathology:
                if not self.cfg.gateway and self.cfg.mode == "pathology":
                    self.outbox.dequeue(sid, now, "pathology flag withdrawn")
                results.append({"study": sid, "state": (self.outbox.get(sid) or {}).get("state", "idle")})
                continue
            ready = not row.get("awaiting_stable")
            if ready and not self._stable_here(sid):
                # still arriving, and the feed has not read it yet: it goes once it is stable
                self.outbox.touch(sid, now)
                ready = False
            d = decisions.on_flag(self.cfg.mode, self.cfg.gateway, ready)
            state = self.admit(row, d.reason, urgent=False, source="flag") if d.send else row["state"]
            results.append({"study": sid, "state": state, "note": d.reason})
        return {"study_uid": uid, "pathology": pathology, "studies": results,
                "note": None if ids else "flag recorded; the study is not in this archive yet"}

    def correct(self, data: dict, actor: str | None) -> dict:
        """An operator's correction: ``{"action": "reject", "study"|"series": ID, "reason"}``
        or ``{"action": "sync", "study": ID, "reason"}``."""
        action = data.get("action")
        reason = data.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise BadRequest('"reason" is required: say why (it is kept in the audit trail here and upstream)')
        if action == "reject":
            given = [k for k in ("study", "series") if data.get(k) is not None]
            if len(given) != 1:
                raise BadRequest('"reject" takes exactly one of "study" or "series" (an Orthanc ID)')
            rid = data[given[0]]
            if not _safe_id(rid):
                raise BadRequest(f'"{given[0]}" must be an Orthanc ID')
            try:
                return self.corrections.reject("studies" if given[0] == "study" else "series", rid, reason.strip(),
                                               actor)
            except LookupError as exc:
                raise UnknownStudy(str(exc)) from None
        if action == "sync":
            sid = data.get("study")
            if not _safe_id(sid):
                raise BadRequest('"sync" takes "study": an Orthanc study ID')
            try:
                return self.corrections.sync(sid, reason.strip(), actor)
            except LookupError as exc:
                raise UnknownStudy(str(exc)) from None
        raise BadRequest('"action" must be "reject" or "sync"')

    # ------------------------------------------------------------------ sending

    def window_open(self, now: float | None = None) -> bool:
        return windows.is_open(self.cfg.windows, self.cfg.timezone, self.clock() if now is None else now)

    def send_next(self) -> bool:
        """Send and verify the next due study (or apply a due correction);
        False if there was nothing to do."""
        now = self.clock()
        if not self.link.ready(now) and not self.probe_link(now):
            return False
        self.preempt.clear()
        window = self.window_open(now)
        row = self.outbox.next_due(now, window)
        if row is None or not row["urgent"]:
            # corrections (a study under the wrong patient upstream) go before routine studies
            if self.corrections.apply_next(now):
                return True
        if row is None:
            return False
        self.send_study(row)
        return True

    def probe_link(self, now: float) -> bool:
        """While backed off: is the upstream answering again (one GET /system,
        at most every ``link_probe_seconds``)?  If so the backoff ends, and the
        studies it held are due at once."""
        if not self.link.probe_due(now):
            return False
        held_until = self.link.next_try
        try:
            self.upstream.ping()
        except Exception:  # noqa: BLE001 - still down; the backoff stands
            return False
        self.link.succeeded()
        released = self.outbox.release_held(now, held_until)
        self.log.info(f"kontur replication: {self.cfg.upstream.name} answers again; "
                      f"backoff ended, {released} held stud{'y' if released == 1 else 'ies'} due now")
        return True

    def _should_pause(self, urgent: bool) -> str | None:
        if self.stop_event.is_set():
            return "Orthanc is stopping"
        if urgent:
            return None
        if self.preempt.is_set() and self.outbox.urgent_due(self.clock()):
            return "an urgent study goes first"
        if not self.window_open():
            return "the transfer window closed"
        return None

    def send_study(self, row: dict) -> str:
        """Send what the upstream lacks of one study, then verify; returns the outcome."""
        sid = row["study_id"]
        urgent = bool(row["urgent"])
        flight = {"study": sid, "study_uid": row.get("study_uid"), "urgent": urgent, "started_at": self.clock(),
                  "instances_total": None, "instances_sent": 0, "bytes_sent": 0}
        with self._lock:
            self._in_flight = flight
        current = None
        try:
            attempted: set[str] = set()
            rounds = int(self.cfg.t("verify_rounds"))
            for k_round in range(max(1, rounds)):
                local_ids = self.local.study_instance_ids(sid)
                if local_ids is None or not local_ids:
                    return self._study_gone(row)
                remote_ids = self.upstream.study_instance_ids(sid)
                self.link.succeeded()
                if k_round == 0:
                    self.corrections.recheck(sid, local_ids, remote_ids)
                    if not remote_ids:
                        for check in self.presend:
                            reason = check(row, self.upstream)
                            if reason:
                                self.outbox.hold(sid, self.clock(), reason)
                                self.log.warning(f"kontur replication: study {sid} held before sending "
                                                 f"(GET /kontur/validation/{sid} says why)")
                                return "held"
                missing = reconcile.missing_instances(local_ids, remote_ids)
                flight["instances_total"] = len(local_ids)
                if not missing:
                    return self._delivered(sid, local_ids)
                if attempted & set(missing):
                    # we sent these and the upstream said stored, yet it does not list them
                    raise _NotVerified(f"not verified: {self.cfg.upstream.name} lacks "
                                       f"{len(attempted & set(missing))} instance(s) it acknowledged")
                # read the next instance from the local archive while this one is on the wire
                nxt = self._prefetch.submit(self.local.instance_file, missing[0])
                for k, iid in enumerate(missing):
                    why = self._should_pause(urgent)
                    if why:
                        raise Aborted(why)
                    current = iid
                    data = nxt.result()
                    if k + 1 < len(missing):
                        nxt = self._prefetch.submit(self.local.instance_file, missing[k + 1])
                    if data is None:
                        continue                        # deleted here meanwhile
                    self.upstream.post_instance(data, should_abort=self.stop_event.is_set)
                    attempted.add(iid)
                    flight["instances_sent"] += 1
                    flight["bytes_sent"] += len(data)
                current = None
            local_ids = self.local.study_instance_ids(sid) or set()
            remote_ids = self.upstream.study_instance_ids(sid)
            if reconcile.verified(local_ids, remote_ids):
                return self._delivered(sid, local_ids)
            raise _NotVerified(f"not verified after {rounds} rounds: {self.cfg.upstream.name} holds "
                               f"{len(local_ids & remote_ids)} of {len(local_ids)} instances (still receiving?)")
        except Aborted as exc:
            self.outbox.paused(sid, self.clock(), str(exc))
            self.log.info(f"kontur replication: study {sid} paused: {exc}")
            return "paused"
        except StorageLost as exc:
            now = self.clock()
            t = self.cfg.tuning
            wait = backoff.delay(int(row.get("attempts") or 0) + 1, t["retry_base_seconds"], t["retry_factor"],
                                 t["retry_max_seconds"])
            msg = (f"STORAGE LOSS on {self.cfg.node}: Orthanc's index lists instance {current} of this study but "
                   f"its file cannot be read ({exc}); restore the file from backup or re-send it from the modality")
            self.outbox.storage_lost(sid, now, msg, now + wait)
            self.log.error(f"kontur replication: study {sid}: {msg}")
            return "storage-lost"
        except RefusedError as exc:
            reason = (f"{self.cfg.upstream.name} refused instance {current}: {exc}" if current
                      else f"{self.cfg.upstream.name} refused: {exc}")
            self.outbox.park(sid, self.clock(), reason)
            self.log.warning(f"kontur replication: study {sid} parked: {reason}")
            return "parked"
        except TransientError as exc:
            now = self.clock()
            wait = self.link.failed(now, str(exc))
            self.outbox.failed(sid, now, str(exc), now + wait)
            self.log.warning(f"kontur replication: study {sid}: {exc}; next try in {wait:.0f} s")
            return "failed"
        except _NotVerified as exc:
            return self._study_failed(row, str(exc))
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not reach Orthanc
            self.log.error(f"kontur replication: study {sid}: internal error: {exc!r}\n{traceback.format_exc()}")
            return self._study_failed(row, f"internal error: {exc!r}")
        finally:
            with self._lock:
                self._in_flight = None
            # counters once per attempt, not per instance: a sqlite commit (fsync) per
            # instance would cost more than the instance itself
            if flight["instances_sent"]:
                try:
                    with self.outbox.transaction():
                        self.outbox.incr("instances_sent_total", flight["instances_sent"])
                        self.outbox.incr("bytes_sent_total", flight["bytes_sent"])
                except Exception as exc:  # noqa: BLE001
                    self.log.error(f"kontur replication: study {sid}: counting failed: {exc!r}")

    def _study_failed(self, row: dict, message: str) -> str:
        now = self.clock()
        t = self.cfg.tuning
        wait = backoff.delay(int(row.get("attempts") or 0) + 1, t["retry_base_seconds"], t["retry_factor"],
                             t["retry_max_seconds"])
        self.outbox.failed(row["study_id"], now, message, now + wait)
        self.log.warning(f"kontur replication: study {row['study_id']}: {message}; next try in {wait:.0f} s")
        return "failed"

    def _delivered(self, sid: str, local_ids: set[str]) -> str:
        now = self.clock()
        info = self.local.study(sid)
        last_update = info.get("LastUpdate") if info else None
        delete_after = None
        if self.cfg.gateway and self.cfg.retention_days is not None:
            delete_after = now + float(self.cfg.retention_days) * 86400
        self.outbox.delivered(sid, now, len(local_ids), last_update, delete_after, reconcile.set_digest(local_ids))
        self.log.info(f"kontur replication: study {sid} delivered and verified "
                      f"({len(local_ids)} instances held by {self.cfg.upstream.name})")
        self.corrections.on_delivered(sid)
        if delete_after is not None and delete_after <= now:
            self.wake_sender.set()
        return "delivered"

    def _study_gone(self, row: dict) -> str:
        sid = row["study_id"]
        if row.get("delivered_at"):
            # a gateway already deleted its verified copy; nothing left to send
            self.outbox.delivered(sid, self.clock(), int(row.get("delivered_count") or 0),
                                  row.get("delivered_last_update"), None, row.get("delivered_digest"))
            self.outbox.mark_deleted(sid, self.clock(), 0)
            return "delivered"
        reason = "deleted from this archive before it was replicated"
        self.outbox.gone(sid, self.clock(), reason)
        self.log.warning(f"kontur replication: study {sid}: {reason}")
        return "gone"

    # ------------------------------------------------------------------ gateway

    def housekeeping(self) -> int:
        """Gateway: delete local copies whose delivery was verified and whose
        retention has passed -- instance by instance, only those the upstream
        lists right before; an instance it does not list (arrived since) is
        kept, and its study queued again."""
        now = self.clock()
        if not self.link.ready(now):
            return 0
        deleted = 0
        for row in self.outbox.deletions_due(now):
            if self.stop_event.is_set():
                break
            sid = row["study_id"]
            try:
                local_ids = self.local.study_instance_ids(sid) or set()
                remote_ids = self.upstream.study_instance_ids(sid)
                n = 0
                for iid in sorted(local_ids & remote_ids):
                    if self.local.delete_instance(iid):
                        n += 1
                self.outbox.mark_deleted(sid, self.clock(), n)
                deleted += n
                kept = len(local_ids - remote_ids)
                self.log.info(f"kontur replication: study {sid}: deleted {n} verified instance(s) here"
                              + (f", kept {kept} not yet delivered" if kept else ""))
                if kept:
                    fresh = self.outbox.get(sid) or row
                    self.admit(fresh, f"gateway housekeeping: {kept} instance(s) here not yet at "
                                      f"{self.cfg.upstream.name}", urgent=False, source="housekeeping")
            except TransientError as exc:
                self.link.failed(self.clock(), str(exc))
                break
            except Exception as exc:  # noqa: BLE001
                self.log.error(f"kontur replication: study {sid}: deleting the local copy failed: {exc!r}")
                self.outbox_error(sid, f"deleting the local copy failed: {exc!r}")
        return deleted

    # ------------------------------------------------------------------ full pass

    def run_full_pass(self, trigger: str = "operator") -> dict:
        """Run (or resume) a full pass now, in the calling thread."""
        stats = self.full_pass.run(trigger)
        self.corrections.check_blocked()
        return stats

    def request_full_pass(self, trigger: str) -> dict:
        self.full_pass.request(trigger)
        self.full_pass_wake.set()
        return {"requested": True, "trigger": trigger}

    # ------------------------------------------------------------------ visibility

    def status(self) -> dict:
        now = self.clock()
        s = self.outbox.summary(now, self.cfg.deadline_hours * 3600)
        last_error = self.outbox.get_meta_json("last_error")
        with self._lock:
            flight = dict(self._in_flight) if self._in_flight else None
        oldest = s["oldest_pending_queued_at"]
        feed = self.feed.status(now)
        alarms = []
        if s["storage_errors"]:
            alarms.append(f"storage loss: {s['storage_errors']} stud{'y' if s['storage_errors'] == 1 else 'ies'} "
                          f"with files Orthanc's index lists but cannot read")
        if feed["failures"]:
            alarms.append(f"change feed stopped at {feed['position']}: {(feed['last_error'] or {}).get('message')}")
        corrections = self.outbox.correction_counts()
        if corrections["refused"]:
            alarms.append(f"{corrections['refused']} correction(s) refused by {self.cfg.upstream.name}")
        return {
            "enabled": True,
            "node": self.cfg.node,
            "role": self.cfg.role,
            "hospital": self.cfg.hospital,
            "policy": "gateway" if self.cfg.gateway else self.cfg.mode,
            "mode": self.cfg.mode,
            "gateway": self.cfg.gateway,
            "upstream": {**self.cfg.upstream.public(), "receiver": self.counter.receiver_available},
            "windows": list(self.cfg.windows),
            "timezone": self.cfg.timezone,
            "window_open": self.window_open(now),
            "seconds_until_window": windows.seconds_until_open(self.cfg.windows, self.cfg.timezone, now),
            "bandwidth_mbit": self.cfg.bandwidth_mbit,
            "deadline_hours": self.cfg.deadline_hours,
            "retention_days": self.cfg.retention_days,
            "queue_depth": s["queue_depth"],
            "urgent_pending": s["urgent_pending"],
            "oldest_pending_age_seconds": round(now - oldest, 1) if oldest else None,
            "overdue": s["overdue"],
            "in_flight": flight,
            "delivered": s["by_state"]["delivered"],
            "failed": s["failing"],
            "parked": s["by_state"]["parked"],
            "held": s["by_state"]["held"],
            "gone": s["by_state"]["gone"],
            "awaiting_stable": s["awaiting_stable"],
            "deletions_pending": s["deletions_pending"],
            "storage_errors": s["storage_errors"],
            "divergent": s["divergent"],
            "corrections": corrections,
            "alarms": alarms,
            "counters": self.outbox.counters(),
            "last_error": last_error,
            "link": {"up": self.link.up, "failures": self.link.failures,
                     "next_try_in_seconds": round(max(0.0, self.link.next_try - now), 1),
                     "last_error": self.link.last_error},
            "changes_seq": feed["position"],
            "feed": feed,
            "full_pass": self.full_pass.public(now),
            "stable_age": self.stable_age,
            # what each gate reports (the transfer package: valid / incomplete / quarantined)
            **{g.name: g.status() for g in self.gates if hasattr(g, "status")},
            **{name: fn() for name, fn in self.extra_status.items()},
        }

    def parked(self) -> list[dict]:
        return self.outbox.parked()

    def flagged(self) -> dict:
        """The pathology flags (an auditor compares them with the TsAMI: KONTUR-REG-04)."""
        return self.outbox.flagged()

    def problems(self) -> dict:
        """What an operator must look at: parked, storage errors, divergent
        studies, open and refused corrections, the recent audit trail."""
        return {"parked": self.outbox.parked(), "storage_errors": self.outbox.storage_errors(),
                "divergent": self.outbox.divergent(),
                "corrections": self.outbox.corrections(["blocked", "waiting", "pending", "refused"]),
                "audit": self.outbox.audit_log(50)}


class _NotVerified(Exception):
    pass


def _safe_id(value: Any) -> bool:
    """An Orthanc resource ID (or a test's stand-in): nothing that changes a REST path."""
    return isinstance(value, str) and 0 < len(value) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "-.")
                                                                   for ch in value)
