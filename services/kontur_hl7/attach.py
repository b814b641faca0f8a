# SPDX-License-Identifier: AGPL-3.0-or-later
"""The attacher: each kept result (``store.results``) becomes a report inside
its study on this node's Orthanc.  Glue: the report is ``results``, the state
``store``.

The service is a DICOM peer of its own Orthanc, as a modality is: it finds
the study with a C-FIND (by its Study Instance UID, else by the accession
number) and stores the report with a C-STORE, under its own AE title that
the rendered ``DicomModalities`` admits from loopback only.  No REST, so no
credential on the service's side; and the report enters Orthanc like every
instance (the ingest stage, the change feed, replication).

A result whose study is not here yet waits and is tried again, backing off
from ``retry_seconds`` to ``max_retry_seconds``; a new result is tried at
once (``store.results_wake``).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from . import results

log = logging.getLogger("kontur-hl7")


class Attacher:
    def __init__(self, store, *, host: str, port: int, called_aet: str, calling_aet: str,
                 retry_seconds: float = 10.0, max_retry_seconds: float = 600.0, poll_seconds: float = 5.0):
        self.store = store
        self.host, self.port, self.called, self.calling = host, int(port), called_aet, calling_aet
        self.retry, self.max_retry, self.poll = float(retry_seconds), float(max_retry_seconds), float(poll_seconds)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kontur-attach", daemon=True)

    def start(self) -> "Attacher":
        # pynetdicom and pydicom imported now, not when the first result waits for them
        import pynetdicom.sop_class  # noqa: F401, PLC0415
        import pydicom.dataset  # noqa: F401, PLC0415
        self.thread.start()
        log.info("reports: results attached to their studies on %s at %s:%d as %s", self.called, self.host,
                 self.port, self.calling)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.store.results_wake.set()
        self.thread.join(10)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            self.store.results_wake.wait(self.poll)
            self.store.results_wake.clear()
            if self.stop_event.is_set():
                break
            try:
                for r in self.store.results_due(time.time()):
                    self.attach(r)
            except Exception as exc:  # noqa: BLE001 - the database: the next round tries again
                log.error("reports: %s", exc)

    def _backoff(self, r: dict) -> float:
        return min(self.max_retry, self.retry * 2 ** min(int(r.get("attempts") or 0), 10))

    def attach(self, r: dict) -> bool:
        acc = r["accession"]
        try:
            found = self.find(r.get("study_uid"), acc)
        except Exception as exc:  # noqa: BLE001 - Orthanc down, refused: wait and try again
            self.store.result_waits(r["id"], f"Orthanc's C-FIND failed: {exc}", self._backoff(r))
            log.warning("result %s (accession %s): Orthanc's C-FIND failed: %s", r["control_id"], acc, exc)
            return False
        if len(found) != 1:
            why = ("its study is not on this node yet" if not found else
                   f"{len(found)} studies here have accession {acc}; the result names no Study Instance UID")
            self.store.result_waits(r["id"], why, self._backoff(r))
            log.info("result %s (accession %s): waits: %s", r["control_id"], acc, why)
            return False
        study = found[0]
        predecessor = self.store.result_predecessor(r)
        ds = results.sr_dataset(r["report"], study, now=dt.datetime.now(), predecessor=predecessor,
                                pathology=bool(r.get("pathology")))
        try:
            status = self.c_store(ds)
        except Exception as exc:  # noqa: BLE001
            status = f"{type(exc).__name__}: {exc}"
        if status != 0x0000:
            why = f"Orthanc did not store the report ({status if isinstance(status, str) else f'0x{status:04X}'})"
            self.store.result_waits(r["id"], why, self._backoff(r))
            log.warning("result %s (accession %s): %s", r["control_id"], acc, why)
            return False
        self.store.result_attached(r["id"], study_uid=study["StudyInstanceUID"], sop_uid=ds.SOPInstanceUID)
        log.info("result %s (accession %s): report %s attached to its study", r["control_id"], acc,
                 ds.SOPInstanceUID)
        return True

    # --- DICOM ---------------------------------------------------------------------

    def _associate(self, contexts):
        from pynetdicom import AE  # noqa: PLC0415 - the shipped wheel
        ae = AE(self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for c in contexts:
            ae.add_requested_context(*c)
        assoc = ae.associate(self.host, self.port, ae_title=self.called)
        if not assoc.is_established:
            raise ConnectionError(f"{self.called} at {self.host}:{self.port} did not accept an association "
                                  f"from {self.calling}")
        return assoc

    def find(self, study_uid: str | None, accession: str) -> list[dict]:
        """The studies here with that Study Instance UID (else accession number)."""
        from pydicom.dataset import Dataset  # noqa: PLC0415
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: PLC0415
        q = Dataset()
        q.SpecificCharacterSet = "ISO_IR 192"
        q.QueryRetrieveLevel = "STUDY"
        for k in results.STUDY_KEYS:
            setattr(q, k, "")
        if study_uid:
            q.StudyInstanceUID = study_uid
        else:
            q.AccessionNumber = accession
        assoc = self._associate([(FIND,)])
        out = []
        try:
            for status, ident in assoc.send_c_find(q, FIND):
                if status is None:
                    raise ConnectionError("no answer to the C-FIND")
                if status.Status in (0xFF00, 0xFF01) and ident is not None:
                    out.append({k: str(ident.get(k, "") or "") for k in results.STUDY_KEYS})
                elif status.Status != 0x0000:
                    raise ConnectionError(f"C-FIND status 0x{status.Status:04X}")
        finally:
            assoc.release()
        return out

    def c_store(self, ds) -> int:
        from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415
        assoc = self._associate([(results.BASIC_TEXT_SR, [ExplicitVRLittleEndian])])
        try:
            status = assoc.send_c_store(ds)
            return int(status.Status) if status is not None and "Status" in status else -1
        finally:
            assoc.release()
