# SPDX-License-Identifier: AGPL-3.0-or-later
"""The node's replication REST API (served by the plugin under /kontur/).

    GET  /kontur/replication            status (JSON)
    GET  /kontur/replication/metrics    the same, Prometheus text format
    GET  /kontur/replication/parked     parked studies with their reasons
    POST /kontur/replicate              {"study": ID or UID} | {"patient": PatientID}, "urgent": bool
    POST /kontur/flag                   {"study": ID or UID, "pathology": bool}

Pure: ``handle()`` takes the method, path and body and returns
(status, content type, body bytes); the glue writes them to Orthanc's output.
A bad body gets 400 with a JSON error, never an exception.
"""
from __future__ import annotations

import json
import traceback
from typing import Any, Callable

from . import metrics
from .engine import BadRequest, UnknownStudy

JSON = "application/json"
PROM = "text/plain; version=0.0.4; charset=utf-8"

ROUTES = {
    "/kontur/replication": "GET",
    "/kontur/replication/metrics": "GET",
    "/kontur/replication/parked": "GET",
    "/kontur/replicate": "POST",
    "/kontur/flag": "POST",
}


def _json(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, JSON, (json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def error(status: int, message: str, **extra: Any) -> tuple[int, str, bytes]:
    return _json(status, {"error": message, "status": status, **extra})


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


def handle(engine: Any, method: str, path: str, body: bytes | None,
           log_error: Callable[[str], Any] = print) -> tuple[int, str, bytes]:
    path = path.rstrip("/") or path
    allowed = ROUTES.get(path)
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
        data = _body(body)
        if path == "/kontur/replicate":
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
