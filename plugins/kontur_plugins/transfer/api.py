# SPDX-License-Identifier: AGPL-3.0-or-later
"""The transfer package's REST routes (issue 10), beside the replication API:

    GET  /kontur/validation/{study}     the latest validation of one study (Orthanc ID or StudyInstanceUID)
    GET  /kontur/quarantine             what this node holds in quarantine, why, and the summary
    POST /kontur/quarantine/release     {"study": ID or UID, "reason": "..."}: the audited manual
                                        override; the study is admitted at once

Receiving side (every node; peers of downstream nodes):

    POST /kontur/patients               {"patients": [{"id", "issuer", "name", "birth_date"}]}:
                                        held here, and the conflict if any (``identity.answer``)

Pure like ``replication.api``: (status, content type, body bytes) out.
"""
from __future__ import annotations

import re
import traceback
from typing import Any, Callable

from ..replication.api import _body, _json, _str_field, error
from ..replication.engine import BadRequest, UnknownStudy
from ..replication.receiver import ReceiverError
from . import identity
from .gate import NotHeld, TransferGate

ROUTES = {"/kontur/quarantine": "GET", "/kontur/quarantine/release": "POST"}
RECEIVER_ROUTES = {"/kontur/patients": "POST"}
VALIDATION = re.compile(r"^/kontur/validation/([A-Za-z0-9.\-]{1,64})$")
#: added to the glue's route pattern
PATTERN = "patients|quarantine|quarantine/release|validation/[^/]+"


def handle_receiver(local: Any, method: str, body: bytes | None,
                    log_error: Callable[[str], Any] = print) -> tuple[int, str, bytes]:
    """POST /kontur/patients, for the nodes that send here."""
    if method != "POST":
        return error(405, "/kontur/patients accepts POST only", allow="POST")
    if local is None:
        return error(503, "kontur's receiver is not running on this node")
    try:
        try:
            data = _body(body)
        except BadRequest as exc:
            raise ReceiverError(400, str(exc)) from None
        return _json(200, identity.answer(local, data))
    except ReceiverError as exc:
        return error(exc.status, str(exc))
    except Exception as exc:  # noqa: BLE001
        log_error(f"kontur receiver: POST /kontur/patients failed: {exc!r}\n{traceback.format_exc()}")
        return error(500, f"internal error ({type(exc).__name__}); see the Orthanc log")


def is_route(path: str) -> bool:
    path = path.rstrip("/")
    return path in ROUTES or path.startswith("/kontur/validation/")


def _gate(engine: Any) -> TransferGate | None:
    for g in getattr(engine, "gates", []):
        if isinstance(g, TransferGate):
            return g
    return None


def _resolve(engine: Any, ident: str) -> str:
    ids = engine.local.resolve_study(ident)
    if not ids:
        raise UnknownStudy(f"no study {ident} on this node")
    if len(ids) > 1:
        raise BadRequest(f"{ident} names {len(ids)} studies here (one StudyInstanceUID under several patients); "
                         f"give the Orthanc ID")
    return ids[0]


def handle(engine: Any, method: str, path: str, body: bytes | None, caller: str | None,
           log_error: Callable[[str], Any] = print) -> tuple[int, str, bytes]:
    path = path.rstrip("/")
    m = VALIDATION.match(path)
    allowed = "GET" if m else ROUTES.get(path)
    if allowed is None:
        return error(404, f"no such kontur endpoint: {path}")
    if method != allowed:
        return error(405, f"{path} accepts {allowed} only", allow=allowed)
    gate = _gate(engine)
    if gate is None:
        return error(503, "the transfer package does not validate on this node (no validation section in its policy)")
    try:
        if m:
            study_id = _resolve(engine, m.group(1))
            row = gate.store.get(study_id)
            if row is None:
                raise UnknownStudy(f"study {study_id} has not been validated yet (it is validated when it is "
                                   f"ready to go upstream)")
            return _json(200, {"node": engine.cfg.node, "hospital": engine.cfg.hospital, **row})
        if path == "/kontur/quarantine":
            return _json(200, {"node": engine.cfg.node, "hospital": engine.cfg.hospital,
                               "mode": gate.settings.mode, "summary": gate.status(),
                               "quarantined": gate.store.listing("quarantined")})
        data = _body(body)
        unknown = sorted(set(data) - {"study", "reason"})
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected study and reason")
        ident = _str_field(data, "study")
        reason = data.get("reason")
        if ident is None:
            raise BadRequest('"study" is required (a StudyInstanceUID or an Orthanc study ID)')
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
            raise BadRequest('"reason" is required: why the study may go as it is (at most 500 characters)')
        study_id = _resolve(engine, ident)
        try:
            row = gate.store.release(study_id, caller, reason.strip(), engine.clock())
        except NotHeld as exc:
            return error(409, str(exc))
        outbox_row = engine.outbox.ensure(study_id, engine.clock(), row.get("study_uid"), row.get("patient_id"))
        state = engine.admit(outbox_row, f"released from quarantine by {caller or 'an operator'}: {reason.strip()}",
                             urgent=False, source="operator")
        return _json(200, {"released": row, "state": state})
    except BadRequest as exc:
        return error(400, str(exc))
    except UnknownStudy as exc:
        return error(404, str(exc))
    except Exception as exc:  # noqa: BLE001
        log_error(f"kontur transfer: {method} {path} failed: {exc!r}\n{traceback.format_exc()}")
        return error(500, f"internal error ({type(exc).__name__}); see the Orthanc log")
