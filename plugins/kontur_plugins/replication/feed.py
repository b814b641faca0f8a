# SPDX-License-Identifier: AGPL-3.0-or-later
"""The change feed: Orthanc's ``/changes``, read at least once.

The saved position (``changes_seq`` in the outbox) only ever covers changes
whose effect is durably committed: a batch is handled in one transaction that
also moves the position; if any change fails, the transaction is rolled back,
the changes before the failing one are committed again on their own, and the
position stops right before it.  The failing change is retried with backoff
and shows as the feed's ``last_error``; nothing after it is skipped.  (A full
disk makes SQLite roll a transaction back by itself; the outbox refuses to
commit what is left of it, so a full disk stops the feed instead of moving the
position past lost work.)

Orthanc's change log can restart under the plugin: an index restored from a
backup, rebuilt or migrated numbers its changes from 1 again (the saved
position is past ``/changes?last``), and ``DELETE /changes`` clears it (nothing
after the position although ``Last`` is beyond it).  Either way the feed can
no longer see what happened: it says so (status, metrics, the log), resets the
position to the log's end and asks for a full pass at once.

Handlers must be idempotent: after a failure or a crash a change is handled
again.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import backoff, reconcile


class FeedError(Exception):
    """A change could not be handled; the position stays before it."""

    def __init__(self, seq: int, message: str):
        super().__init__(message)
        self.seq = seq


class ChangeFeed:
    def __init__(self, local: Any, outbox: Any, handle: Callable[[str, str, int], None], *,
                 clock: Callable[[], float], batch: int, retry: tuple[float, float, float],
                 on_reset: Callable[[str], None], log_info: Callable[[str], Any] = print,
                 log_warning: Callable[[str], Any] = print):
        self.local = local
        self.outbox = outbox
        self.handle = handle
        self.clock = clock
        self.batch = int(batch)
        self.retry = retry
        self.on_reset = on_reset
        self.info = log_info
        self.warning = log_warning
        self.failures = 0
        self.next_try = 0.0
        self.last_error: dict | None = None
        self.last_seen: int | None = None
        self.batches = 0                # transactions committed since start (one per read of /changes)

    # --- state ---------------------------------------------------------------------

    @property
    def position(self) -> int | None:
        v = self.outbox.get_meta("changes_seq")
        return int(v) if v is not None else None

    def ready(self, now: float) -> bool:
        return now >= self.next_try

    def status(self, now: float) -> dict:
        info = self.outbox.get_meta_json("feed") or {}
        pos = self.position
        return {
            "position": pos or 0,
            "last": self.last_seen,
            "lag": (self.last_seen - pos) if self.last_seen is not None and pos is not None else None,
            "resets": int(info.get("resets", 0)),
            "last_reset": info.get("last_reset"),
            "failures": self.failures,
            "batches": self.batches,
            "last_error": self.last_error,
            "next_try_in_seconds": round(max(0.0, self.next_try - now), 1) if self.failures else 0.0,
        }

    def _failed(self, seq: int | None, message: str) -> None:
        now = self.clock()
        self.failures += 1
        wait = backoff.delay(self.failures, *self.retry)
        self.next_try = now + wait
        self.last_error = {"at": now, "seq": seq, "message": message, "retry_in_seconds": wait}
        try:
            self.outbox.record_error(now, None, f"change feed: {message}")
        except Exception:  # noqa: BLE001 - the disk may be what failed; the error stays in memory
            pass

    def _reset(self, last: int, reason: str) -> None:
        now = self.clock()
        info = self.outbox.get_meta_json("feed") or {}
        info["resets"] = int(info.get("resets", 0)) + 1
        info["last_reset"] = {"at": now, "reason": reason, "to": last}
        with self.outbox.transaction():
            self.outbox.set_meta("changes_seq", last)
            self.outbox.set_meta_json("feed", info)
        self.warning(f"kontur replication: {reason}; following /changes from {last} and running a full pass now")
        self.on_reset(reason)

    # --- reading -----------------------------------------------------------------------

    def step(self) -> int:
        """Read and handle what the log holds after the position; returns how
        many changes were read.  Raises :class:`FeedError` after recording a
        failure (the caller waits; :meth:`ready` says when to try again)."""
        seq = self.position
        if seq is None:
            # first start on this archive: its history is the full pass's job
            last = self.local.last_change()
            self.outbox.set_meta("changes_seq", last)
            self.last_seen = last
            self.info(f"kontur replication: first start, following /changes from {last}; "
                      "older studies are compared by the full pass")
            return 0
        total = 0
        while True:
            res = self.local.changes(seq, self.batch)
            changes = res.get("Changes", []) or []
            last = int(res.get("Last", 0) or 0)
            self.last_seen = last
            if last < seq:
                self._reset(last, f"Orthanc's change log restarted: the saved position {seq} is past its last "
                                  f"change {last} (index restored, rebuilt or migrated)")
                return total
            if not changes and last > seq and res.get("Done", True) and total == 0:
                self._reset(last, f"Orthanc's change log holds nothing after position {seq} although its last "
                                  f"change is {last} (the log was cleared, or everything after it deleted)")
                return total
            if not changes:
                break
            self._apply(seq, changes)
            total += len(changes)
            seq = reconcile.batch_end(seq, changes)
            if res.get("Done", True):
                break
        if self.failures:
            self.info(f"kontur replication: change feed resumed at {seq} after {self.failures} failed attempt(s)")
        self.failures = 0
        self.next_try = 0.0
        self.last_error = None
        return total

    def _apply(self, seq: int, changes: list[dict]) -> None:
        parsed = reconcile.parse_change_batch(changes)
        end = reconcile.batch_end(seq, changes)
        done = 0
        try:
            with self.outbox.transaction():
                for kind, rid, s in parsed:
                    self.handle(kind, rid, s)
                    done += 1
                self.outbox.set_meta("changes_seq", end)
            self.batches += 1
            return
        except Exception as exc:  # noqa: BLE001 - recorded and raised as a FeedError below
            failing = parsed[done] if done < len(parsed) else None
            error = exc
        # the transaction is gone: commit the changes before the failing one again, on their own
        stop = failing[2] - 1 if failing else seq
        if failing and done:
            try:
                with self.outbox.transaction():
                    for kind, rid, s in parsed[:done]:
                        self.handle(kind, rid, s)
                    self.outbox.set_meta("changes_seq", max(seq, stop))
            except Exception:  # noqa: BLE001 - the position stays where it was
                stop = seq
        else:
            stop = seq
        if failing:
            kind, rid, s = failing
            message = f"change {s} ({kind} {rid}) failed: {error!r}; the feed waits before it"
        else:
            message = f"committing changes {seq + 1}..{end} failed: {error!r}; the feed waits at {seq}"
        self._failed(failing[2] if failing else seq + 1, message)
        raise FeedError(failing[2] if failing else seq + 1, message)
