# SPDX-License-Identifier: AGPL-3.0-or-later
"""The upstream's REST API over HTTP or HTTPS with mutual TLS (stdlib only).

Instances go one by one as ``POST {url}instances`` with the DICOM bytes: the
sender can pace every chunk to the bandwidth cap, learns per instance whether
the upstream stored it (``Success``/``AlreadyStored``: with
OverwriteInstances=false a re-send is a no-op) or refused it, and verifies a
study by listing the upstream's instance IDs for it (Orthanc IDs are hashes of
the DICOM UIDs, so the same study has the same IDs on both sides).

Errors are sorted for the caller:

:class:`TransientError`  the link or the server (refused connection, timeout,
                         5xx, 401/403 misconfiguration): retry later
:class:`RefusedError`    the upstream refused *this* instance (4xx, or its
                         filters dropped it): park the study with the reason
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from .config import Upstream
from .pacing import Pacer

#: at most this many characters of UIDs in one QIDO query string (nginx's default
#: request-line buffer is 8 KiB)
QIDO_MAX_QUERY = 3500


class TransientError(Exception):
    pass


class RefusedError(Exception):
    pass


class Aborted(Exception):
    """Sending stopped on purpose (Orthanc stopping, urgent study, window closed)."""


def _details(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            parts = [str(data.get(k)) for k in ("Message", "Details") if data.get(k)]
            if parts:
                return ": ".join(parts)
    except ValueError:
        pass
    text = body[:200].decode("utf-8", errors="replace").strip()
    return text or "(no details)"


def classify(status: int, body: bytes) -> Exception | None:
    """None for success; otherwise the error to raise for this HTTP status."""
    if 200 <= status < 300:
        return None
    detail = _details(body)
    if status == 401:
        return TransientError(f"HTTP 401: the upstream refused our credentials; check the peer account ({detail})")
    if status == 403:
        return TransientError(f"HTTP 403: the upstream forbids this account to upload; check its rights ({detail})")
    if status in (408, 429) or status >= 500:
        return TransientError(f"HTTP {status}: {detail}")
    return RefusedError(f"HTTP {status}: {detail}")


class UpstreamClient:
    def __init__(self, upstream: Upstream, *, timeout: float = 60.0, chunk_bytes: int = 65536,
                 pacer: Pacer | None = None):
        self.upstream = upstream
        self.timeout = timeout
        self.chunk = int(chunk_bytes)
        self.pacer = pacer or Pacer(None)
        u = urllib.parse.urlsplit(upstream.url)
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.base = u.path if u.path.endswith("/") else u.path + "/"
        self._conn: http.client.HTTPConnection | None = None
        self._ssl = self._context() if self.scheme == "https" else None
        self.qido_available = True
        headers = {"User-Agent": "kontur-replication"}
        if upstream.username is not None:
            token = base64.b64encode(f"{upstream.username}:{upstream.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.headers = headers

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.upstream.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.upstream.cert_file:
            ctx.load_cert_chain(self.upstream.cert_file, self.upstream.key_file)
        return ctx

    # --- connection -----------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._conn.connect()
            # headers and paced chunks go in separate writes: no Nagle/delayed-ACK stalls
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def abort(self) -> None:
        """From another thread: break a blocked send or read (Orthanc stopping)."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def request(self, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
                headers: dict[str, str] | None = None, *, length: int | None = None) -> tuple[int, bytes]:
        """One request on the kept-alive connection; reconnects once if the
        server closed an idle connection.  Network errors -> TransientError."""
        hdrs = dict(self.headers)
        hdrs.update(headers or {})
        if length is not None:
            hdrs["Content-Length"] = str(length)
        url = self.base + path.lstrip("/")
        for attempt in (1, 2):
            fresh = self._conn is None
            try:
                conn = self._connection()
                conn.request(method, url, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except Aborted:
                self.close()
                raise
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 1 and not fresh and not callable(getattr(body, "__next__", None)):
                    continue          # a stale kept-alive connection: once more, fresh
                raise TransientError(f"connection to {self.upstream.name} lost: {exc}") from None
            except ssl.SSLError as exc:
                self.close()
                raise TransientError(f"TLS with {self.upstream.name} failed: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                what = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc) or type(exc).__name__
                raise TransientError(f"cannot reach {self.upstream.name} at {self.host}:{self.port}: {what}") from None
        raise TransientError("unreachable")  # pragma: no cover

    # --- instances ----------------------------------------------------------------

    def _paced_body(self, data: bytes, should_abort: Callable[[], bool] | None) -> Iterable[bytes]:
        view = memoryview(data)
        for off in range(0, len(data), self.chunk):
            piece = view[off:off + self.chunk]
            self.pacer.wait(len(piece))
            if should_abort is not None and should_abort():
                raise Aborted("stopped while sending")
            yield piece

    def post_instance(self, data: bytes, should_abort: Callable[[], bool] | None = None) -> dict:
        """Store one DICOM instance upstream; returns Orthanc's answer
        (``Status`` is ``Success`` or ``AlreadyStored``)."""
        headers = {"Content-Type": "application/dicom"}
        if self.pacer.capped:
            status, body = self.request("POST", "instances", self._paced_body(data, should_abort),
                                        headers, length=len(data))
        else:
            self.pacer.bytes_total += len(data)
            status, body = self.request("POST", "instances", data, headers, length=len(data))
        err = classify(status, body)
        if err is not None:
            raise err
        try:
            answer = json.loads(body)
        except ValueError:
            raise TransientError(f"the upstream answered POST /instances with something else than JSON: {body[:100]!r}") from None
        if isinstance(answer, list):          # a ZIP upload answers a list; one file answers one object
            answer = answer[0] if answer else {}
        st = answer.get("Status")
        if st in ("Success", "AlreadyStored"):
            return answer
        if st == "FilteredOut":
            raise RefusedError("the upstream's filters refused the instance (Status FilteredOut)")
        raise TransientError(f"unexpected status from the upstream: {st!r}")

    # --- verification and counts ------------------------------------------------

    def study_instance_ids(self, study_id: str) -> set[str]:
        """Orthanc IDs of the instances the upstream holds for this study (empty if none)."""
        status, body = self.request("GET", f"studies/{study_id}/series")
        if status == 404:
            return set()
        err = classify(status, body)
        if err is not None:
            raise TransientError(str(err)) if isinstance(err, RefusedError) else err
        try:
            return {i for s in json.loads(body) for i in s.get("Instances", [])}
        except (ValueError, AttributeError, TypeError):
            raise TransientError("the upstream's study listing is not what Orthanc answers") from None

    def study_counts(self, studies: list[tuple[str, str, str]]) -> dict[str, int]:
        """Instance counts upstream for (study_id, StudyInstanceUID, PatientID)
        triples: a few QIDO-RS queries (NumberOfStudyRelatedInstances) for many
        studies; if the upstream has no DICOMweb, one listing per study."""
        out: dict[str, int] = {sid: 0 for sid, _, _ in studies}
        if not studies:
            return out
        if self.qido_available:
            try:
                for batch in _batches(studies):
                    self._qido_counts(batch, out)
                return out
            except _NoQido:
                self.qido_available = False
        for sid, _, _ in studies:
            out[sid] = len(self.study_instance_ids(sid))
        return out

    def _qido_counts(self, batch: list[tuple[str, str, str]], out: dict[str, int]) -> None:
        from .reconcile import orthanc_study_id
        uids = ",".join(sorted({uid for _, uid, _ in batch}))
        q = urllib.parse.urlencode({"StudyInstanceUID": uids, "includefield": "NumberOfStudyRelatedInstances",
                                    "limit": str(len(batch) * 4 + 10)}, safe=",")
        status, body = self.request("GET", f"dicom-web/studies?{q}", headers={"Accept": "application/dicom+json"})
        if status == 204:
            return
        if status in (404, 405, 501):
            raise _NoQido()
        err = classify(status, body)
        if err is not None:
            raise TransientError(str(err)) if isinstance(err, RefusedError) else err
        try:
            answers = json.loads(body) if body.strip() else []
        except ValueError:
            raise _NoQido() from None
        wanted = {sid for sid, _, _ in batch}
        for a in answers:
            uid = _first(a, "0020000D")
            pid = _first(a, "00100020") or ""
            count = _first(a, "00201208")
            if uid is None or count is None:
                continue
            sid = orthanc_study_id(pid, uid)
            if sid in wanted:
                out[sid] = int(count)

    def ping(self) -> dict:
        status, body = self.request("GET", "system")
        err = classify(status, body)
        if err is not None:
            raise TransientError(str(err))
        return json.loads(body)


class _NoQido(Exception):
    pass


def _first(answer: dict, tag: str) -> Any:
    v = answer.get(tag) or {}
    vals = v.get("Value") or []
    return vals[0] if vals else None


def _batches(studies: list[tuple[str, str, str]]) -> Iterable[list[tuple[str, str, str]]]:
    batch: list[tuple[str, str, str]] = []
    size = 0
    for s in studies:
        if batch and size + len(s[1]) + 1 > QIDO_MAX_QUERY:
            yield batch
            batch, size = [], 0
        batch.append(s)
        size += len(s[1]) + 1
    if batch:
        yield batch
