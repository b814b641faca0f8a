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

    def on_create(event):
        aet, address = caller(event)
        sop = _text(event.request.AffectedSOPInstanceUID)
        refused = allowed(aet, address)
        if refused:
            log.warning("MPPS N-CREATE %s refused: %s", sop, refused)
            return mpps.PROCESSING_FAILURE, None
        ds = event.attribute_list
        ssa = (ds.get("ScheduledStepAttributesSequence") or [None])[0]
        attrs = {"status": _text(ds.get("PerformedProcedureStepStatus")),
                 "accession": _text(ssa.get("AccessionNumber")) if ssa is not None else "",
                 "study_uid": _text(ssa.get("StudyInstanceUID")) if ssa is not None else ""}
        try:
            what = store.mpps_create(mpps.created(sop, attrs, aet))
        except mpps.MppsError as exc:
            log.warning("MPPS N-CREATE %s from %s: 0x%04X %s", sop, aet, exc.status, exc.text)
            return exc.status, None
        log.info("MPPS N-CREATE %s from %s: %s", sop, aet, what)
        return 0x0000, ds

    def on_set(event):
        aet, address = caller(event)
        sop = _text(event.request.RequestedSOPInstanceUID)
        refused = allowed(aet, address)
        if refused:
            log.warning("MPPS N-SET %s refused: %s", sop, refused)
            return mpps.PROCESSING_FAILURE, None
        mod = event.modification_list
        attrs = {"status": _text(mod.get("PerformedProcedureStepStatus"))}
        try:
            what = store.mpps_update(mpps.updated(store.mpps_get(sop), sop, attrs, aet))
        except mpps.MppsError as exc:
            log.warning("MPPS N-SET %s from %s: 0x%04X %s", sop, aet, exc.status, exc.text)
            return exc.status, None
        log.info("MPPS N-SET %s from %s: %s", sop, aet, what)
        return 0x0000, mod

    ae = AE(ae_title)
    ae.add_supported_context(ModalityPerformedProcedureStep)
    ae.require_calling_aet = sorted(devices)
    server = ae.start_server((host, port), block=False,
                             evt_handlers=[(evt.EVT_N_CREATE, on_create), (evt.EVT_N_SET, on_set)])
    log.info("MPPS SCP %s listening on %s", ae_title, server.server_address)
    return server
