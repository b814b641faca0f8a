# SPDX-License-Identifier: AGPL-3.0-or-later
"""The last study each device sent to this node (issue 13: the on-call check).

On a new study the plugin reads the AE title that sent its first instance
(Orthanc's ``RemoteAET`` metadata) and records it here; ``GET /kontur/seen``
answers ``{"since": T, "devices": {AET: {"at": T, "study": ID}}}`` so that
``kontur check`` can warn about a device silent for longer than its usual
rhythm.  ``since`` is when this node started recording: a device that never
sent anything is silent since then, not since 1970.

Pure but for a small worker thread: the callback only queues the study, the
worker does the two REST reads and one write to the node's state, so the
change callback never waits on either.
"""
from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable

META_DEVICES = "seen_devices"
META_SINCE = "seen_since"
#: a device's AE title as Orthanc records it; anything longer or odd is not kept
_MAX_AET = 16


def record(devices: dict[str, Any], aet: str, study: str, at: float) -> dict[str, Any]:
    """``devices`` with ``aet``'s last study set to ``study`` at ``at`` (never moved back in time)."""
    aet = (aet or "").strip()
    if not aet or len(aet) > _MAX_AET:
        return devices
    current = devices.get(aet)
    if current and float(current.get("at", 0)) > at:
        return devices
    return {**devices, aet: {"at": round(at, 1), "study": study}}


def answer(devices: dict[str, Any] | None, since: float | None) -> dict[str, Any]:
    return {"since": since, "devices": dict(devices or {})}


class Seen:
    """The worker and the store (the outbox's meta table: ``get_meta_json`` / ``set_meta_json``)."""

    def __init__(self, store, remote_aet: Callable[[str], str | None], clock: Callable[[], float],
                 log_error: Callable[[str], None] = lambda m: None):
        self.store = store
        self.remote_aet = remote_aet
        self.clock = clock
        self.log_error = log_error
        self._queue: queue.Queue = queue.Queue(maxsize=10000)
        self._lock = threading.Lock()
        if self.store.get_meta_json(META_SINCE) is None:
            self.store.set_meta_json(META_SINCE, round(clock(), 1))
        self._thread = threading.Thread(target=self._run, name="kontur-seen", daemon=True)
        self._thread.start()

    def new_study(self, study: str) -> None:
        try:
            self._queue.put_nowait((study, self.clock()))
        except queue.Full:      # a flood of new studies: the device's next study records it
            pass

    def _run(self) -> None:
        while True:
            study, at = self._queue.get()
            try:
                aet = self.remote_aet(study)
                if aet:
                    with self._lock:
                        devices = self.store.get_meta_json(META_DEVICES) or {}
                        updated = record(devices, aet, study, at)
                        if updated is not devices:
                            self.store.set_meta_json(META_DEVICES, updated)
            except Exception as exc:  # noqa: BLE001 - the worker never dies
                self.log_error(f"kontur: last study per device: {study}: {exc!r}")

    def status(self) -> dict[str, Any]:
        return answer(self.store.get_meta_json(META_DEVICES), self.store.get_meta_json(META_SINCE))


def remote_aet_via(rest_get: Callable[[str], str]) -> Callable[[str], str | None]:
    """The AE title that sent a study's first instance, read through Orthanc's REST API."""
    def lookup(study: str) -> str | None:
        instances = json.loads(rest_get(f"/studies/{study}/instances?expand=false"))
        if not instances:
            return None
        first = instances[0] if isinstance(instances[0], str) else instances[0].get("ID")
        try:
            aet = rest_get(f"/instances/{first}/metadata/RemoteAET")
        except Exception:  # noqa: BLE001 - sent over REST, not DICOM: no RemoteAET
            return None
        return aet.decode("utf-8", "replace") if isinstance(aet, bytes) else aet
    return lookup
