# SPDX-License-Identifier: AGPL-3.0-or-later
"""The MPPS SCP (Orthanc has none): pynetdicom's AE answering N-CREATE and
N-SET of Modality Performed Procedure Step, from the node's modalities only
(calling AE title and address), on its own port.  Glue: the meaning is
``mpps``, the state ``store``.

pynetdicom is not a Debian package: kontur ships its pinned wheel to the node
(``kontur.packages.NODE_WHEELS``) and the unit puts it on the path.
"""
from __future__ import annotations

import logging

from . import mpps

log = logging.getLogger("kontur-hl7")


def _text(value) -> str:
    return str(value or "").strip()


def start(store, *, host: str, port: int, ae_title: str, devices: dict[str, str | None]):
    """Start the SCP in pynetdicom's threads; returns the server (``.shutdown()``)."""
    from pynetdicom import AE, evt  # noqa: PLC0415 - the shipped wheel
    from pynetdicom.sop_class import ModalityPerformedProcedureStep  # noqa: PLC0415

    def caller(event) -> tuple[str, str]:
        req = event.assoc.requestor
        aet = req.ae_title.decode() if isinstance(req.ae_title, bytes) else str(req.ae_title)
        return aet.strip(), req.address

    def allowed(aet: str, address: str) -> str | None:
        if aet not in devices:
            return f"{aet!r} is not a modality of this node"
        want = devices[aet]
        if want and want != address:
            return f"{aet} called from {address}, the inventory puts it at {want}"
        return None

    def handle(event, what: str, sop: str, dataset, apply):
        """The checks and the log lines both requests share; ``apply(aet)`` does the work."""
        aet, address = caller(event)
        refused = allowed(aet, address)
        if refused:
            log.warning("MPPS %s %s refused: %s", what, sop, refused)
            return mpps.PROCESSING_FAILURE, None
        try:
            done = apply(aet)
        except mpps.MppsError as exc:
            log.warning("MPPS %s %s from %s: 0x%04X %s", what, sop, aet, exc.status, exc.text)
            return exc.status, None
        log.info("MPPS %s %s from %s: %s", what, sop, aet, done)
        return 0x0000, dataset

    def on_create(event):
        sop = _text(event.request.AffectedSOPInstanceUID)
        ds = event.attribute_list
        ssa = (ds.get("ScheduledStepAttributesSequence") or [None])[0]
        attrs = {"status": _text(ds.get("PerformedProcedureStepStatus")),
                 "accession": _text(ssa.get("AccessionNumber")) if ssa is not None else "",
                 "study_uid": _text(ssa.get("StudyInstanceUID")) if ssa is not None else ""}
        return handle(event, "N-CREATE", sop, ds, lambda aet: store.mpps_create(mpps.created(sop, attrs, aet)))

    def on_set(event):
        sop = _text(event.request.RequestedSOPInstanceUID)
        mod = event.modification_list
        attrs = {"status": _text(mod.get("PerformedProcedureStepStatus"))}
        return handle(event, "N-SET", sop, mod,
                      lambda aet: store.mpps_update(mpps.updated(store.mpps_get(sop), sop, attrs, aet)))

    ae = AE(ae_title)
    ae.add_supported_context(ModalityPerformedProcedureStep)
    ae.require_calling_aet = sorted(devices)
    server = ae.start_server((host, port), block=False,
                             evt_handlers=[(evt.EVT_N_CREATE, on_create), (evt.EVT_N_SET, on_set)])
    log.info("MPPS SCP %s listening on %s", ae_title, server.server_address)
    return server
