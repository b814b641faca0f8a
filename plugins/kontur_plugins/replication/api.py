# SPDX-License-Identifier: AGPL-3.0-or-later
"""The node's replication REST API (served by the plugin under /kontur/).

Sending side (LAMIs and gateways; operators, admins only through the roles filter):

    GET  /kontur/replication              status (JSON)
    GET  /kontur/replication/metrics      the same, Prometheus text format
    GET  /kontur/replication/parked       parked studies with their reasons
    GET  /kontur/replication/problems     parked, storage errors, divergent studies, corrections, audit
    POST /kontur/replicate                {"study": ID or UID} | {"patient": PatientID}, "urgent": bool
                                          | {"release_parked": true, "reason": "..."}
    POST /kontur/flag                     {"study": ID or UID, "pathology": bool}
    GET  /kontur/flags                    the studies flagged pathology (the 1000 latest), with when and why
    POST /kontur/correct                  {"action": "reject", "study"|"series": ID, "reason": "..."}
                                          | {"action": "sync", "study": ID, "reason": "..."}
    POST /kontur/full-pass                {} : run a full pass now

Receiving side (every node; peers of downstream nodes): see ``receiver.py``

    POST /kontur/digests, /kontur/md5, /kontur/retire, /kontur/replace
    (and the transfer package's POST /kontur/patients: ``transfer.api``)

Pure: ``handle()`` takes the method, path, body, query arguments and the
caller's login and returns (status, content type, body bytes); the glue writes
them to Orthanc's output.  A bad body gets 400 with a JSON error, never an
exception.
"""
from __future__ import annotations

import json
import traceback
from typing import Any, Callable

from . import metrics
from .engine import BadRequest, UnknownStudy
from .receiver import Receiver, ReceiverError

JSON = "application/json"
PROM = "text/plain; version=0.0.4; charset=utf-8"

SENDER_ROUTES = {
    "/kontur/replication": "GET",
    "/kontur/replication/metrics": "GET",
    "/kontur/replication/parked": "GET",
    "/kontur/replication/problems": "GET",
    "/kontur/replicate": "POST",
    "/kontur/flag": "POST",
    "/kontur/flags": "GET",
    "/kontur/correct": "POST",
    "/kontur/full-pass": "POST",
}
RECEIVER_ROUTES = {
    "/kontur/digests": "POST",
    "/kontur/md5": "POST",
    "/kontur/retire": "POST",
    "/kontur/replace": "POST",
}
ROUTES = {**SENDER_ROUTES, **RECEIVER_ROUTES}
#: the regular expression the glue registers (Orthanc matches the whole URI)
ROUTE_PATTERN = "/kontur/(" + "|".join(sorted(r[len("/kontur/"):] for r in ROUTES)) + ")"


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, JSON, (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def error(status: int, message: str, **extra: Any) -> tuple[int, str, bytes]:
    return _json(status, {"error": message, "status": status, "kontur": "plugin", **extra})


def _body(body: bytes | None) -> dict:
    if not body:
        raise BadRequest("the body is empty; expected a JSON object")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def _str_field(data: dict, key: str) -> str | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > 128:
        raise BadRequest(f'"{key}" must be a non-empty string of at most 128 characters')
    return v.strip()


def _bool_field(data: dict, key: str, default: bool) -> bool:
    v = data.get(key, default)
    if not isinstance(v, bool):
        raise BadRequest(f'"{key}" must be true or false')
    return v


def handle_receiver(receiver: Receiver | None, method: str, path: str, body: bytes | None,
                    args: dict[str, str] | None, caller: str | None,
                    log_error: Callable[[str], Any] = print) -> tuple[int, str, bytes]:
    path = path.rstrip("/") or path
    if method != "POST":
        return error(405, f"{path} accepts POST only", allow="POST")
    if receiver is None:
        return error(503, "kontur's receiver is not running on this node")
    args = args or {}
    try:
        if path == "/kontur/replace":
            return _json(200, receiver.replace(args.get("instance"), args.get("reason"), body, caller,
                                               reconstruct=args.get("reconstruct") == "1"))
        try:
            data = json.loads((body or b"").decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ReceiverError(400, f"the body is not JSON ({exc})") from None
        if path == "/kontur/digests":
            return _json(200, receiver.digests(data))
        if path == "/kontur/md5":
            return _json(200, receiver.md5(data))
        if path == "/kontur/retire":
            return _json(200, receiver.retire(data, caller))
    except ReceiverError as exc:
        return error(exc.status, str(exc))
    except Exception as exc:  # noqa: BLE001 - never let an exception reach Orthanc
        log_error(f"kontur receiver: {method} {path} failed: {exc!r}\n{traceback.format_exc()}")
        return error(500, f"internal error ({type(exc).__name__}); see the Orthanc log")
    return error(404, f"no such kontur endpoint: {path}")


def handle(engine: Any, method: str, path: str, body: bytes | None,
           log_error: Callable[[str], Any] = print, caller: str | None = None) -> tuple[int, str, bytes]:
    path = path.rstrip("/") or path
    allowed = SENDER_ROUTES.get(path)
    if allowed is None:
        return error(404, f"no such kontur endpoint: {path}")
    if method != allowed:
        return error(405, f"{path} accepts {allowed} only", allow=allowed)
    try:
        if engine is None:
            return error(503, "replication is not running on this node")
        if path == "/kontur/replication":
            return _json(200, engine.status())
        if path == "/kontur/replication/metrics":
            return 200, PROM, metrics.render(engine.status()).encode()
        if path == "/kontur/replication/parked":
            return _json(200, {"parked": engine.parked()})
        if path == "/kontur/replication/problems":
            return _json(200, engine.problems())
        if path == "/kontur/flags":
            return _json(200, engine.flagged())
        if path == "/kontur/full-pass":
            return _json(202, engine.request_full_pass(f"requested by {caller or 'an operator'}"))
        data = _body(body)
        if path == "/kontur/replicate":
            if "release_parked" in data:
                unknown = sorted(set(data) - {"release_parked", "reason"})
                if unknown:
                    raise BadRequest(f"unknown field(s) {', '.join(unknown)}; release_parked takes a reason only")
                if data["release_parked"] is not True:
                    raise BadRequest('"release_parked" must be true')
                reason = data.get("reason") or "operator released the parked studies"
                if not isinstance(reason, str) or len(reason) > 500:
                    raise BadRequest('"reason" must be text of at most 500 characters')
                return _json(202, {"released": engine.release_parked(actor=caller, reason=reason)})
            unknown = sorted(set(data) - {"study", "patient", "urgent"})
            if unknown:
                raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected study or patient, and urgent")
            study, patient = _str_field(data, "study"), _str_field(data, "patient")
            if (study is None) == (patient is None):
                raise BadRequest('give exactly one of "study" (StudyInstanceUID or Orthanc ID) or "patient" (PatientID)')
            urgent = _bool_field(data, "urgent", False)
            queued = engine.request(study=study, patient=patient, urgent=urgent)
            return _json(202, {"queued": queued})
        if path == "/kontur/flag":
            unknown = sorted(set(data) - {"study", "pathology"})
            if unknown:
                raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected study and pathology")
            study = _str_field(data, "study")
            if study is None:
                raise BadRequest('"study" is required (a StudyInstanceUID or an Orthanc study ID)')
            return _json(200, engine.flag(study, _bool_field(data, "pathology", True)))
        if path == "/kontur/correct":
            unknown = sorted(set(data) - {"action", "study", "series", "reason"})
            if unknown:
                raise BadRequest(f"unknown field(s) {', '.join(unknown)}; expected action, study or series, reason")
            return _json(202, engine.correct(data, caller))
    except BadRequest as exc:
        return error(400, str(exc))
    except UnknownStudy as exc:
        return error(404, str(exc))
    except Exception as exc:  # noqa: BLE001 - never let an exception reach Orthanc
        log_error(f"kontur replication: {method} {path} failed: {exc!r}\n{traceback.format_exc()}")
        return error(500, f"internal error ({type(exc).__name__}); see the Orthanc log")
    return error(404, f"no such kontur endpoint: {path}")  # pragma: no cover


def disabled_status(node: str | None, reason: str) -> dict:
    return {"enabled": False, "node": node, "reason": reason}
