# SPDX-License-Identifier: AGPL-3.0-or-later
"""The upstream's REST API over HTTP or HTTPS with mutual TLS (stdlib only).

Instances go one by one as ``POST {url}instances`` with the DICOM bytes: the
sender can pace every chunk to the bandwidth cap, learns per instance whether
the upstream stored it (``Success``/``AlreadyStored``: with
OverwriteInstances=false a re-send is a no-op) or refused it, and verifies a
study by listing the upstream's instance IDs for it (Orthanc IDs are hashes of
the DICOM UIDs and the PatientID, so the same study has the same IDs on both
sides).

The upstream runs kontur's plugin too; its receiver routes
(``receiver.py``) answer what Orthanc's own API cannot cheaply:
``kontur/digests`` (instance-set digests of many studies from the index, no
file read), ``kontur/md5`` (stored MD5s), ``kontur/retire`` and
``kontur/replace`` (corrections, audited there).  An upstream without them
(a plain Orthanc) is compared by listing each study.

Errors are sorted for the caller:

:class:`TransientError`  the link, the server or the configuration (refused
                         connection, timeout, 5xx, 401/403, a 404 from a
                         routing mistake): retry later, the link backs off
:class:`RefusedError`    the upstream refused *this* instance (Orthanc's own
                         400, 413, 415, or its filters dropped it): park the
                         study with the reason
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from .config import Upstream
from .pacing import Pacer

#: at most this many studies in one receiver request (also below the TsAMI's
#: LimitFindResults, so no answer the plugin relies on can be truncated)
DIGEST_BATCH = 100


class TransientError(Exception):
    pass


class RefusedError(Exception):
    pass


class Aborted(Exception):
    """Sending stopped on purpose (Orthanc stopping, urgent study, window closed)."""


class NoReceiver(Exception):
    """The upstream does not run kontur's receiver routes (an Orthanc without the plugin)."""


def _details(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            parts = [str(data.get(k)) for k in ("Message", "Details", "error") if data.get(k)]
            if parts:
                return ": ".join(parts)
    except ValueError:
        pass
    text = body[:200].decode("utf-8", errors="replace").strip()
    return text or "(no details)"


def _orthanc_answer(body: bytes) -> bool:
    """Is this an error answer written by Orthanc itself (not by nginx or a proxy)?"""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and ("OrthancError" in data or "OrthancStatus" in data)


def classify(status: int, body: bytes) -> Exception | None:
    """None for success; otherwise the error to raise for this HTTP status
    (for requests that name no instance: every failure is the link's)."""
    if 200 <= status < 300:
        return None
    detail = _details(body)
    if status == 401:
        return TransientError(f"HTTP 401: the upstream refused our credentials; check the peer account ({detail})")
    if status == 403:
        return TransientError(f"HTTP 403: the upstream forbids this account the request; check its rights ({detail})")
    if status == 404:
        return TransientError(f"HTTP 404: the upstream has no such route; check the upstream URL ({detail})")
    return TransientError(f"HTTP {status}: {detail}")


def classify_store(status: int, body: bytes) -> Exception | None:
    """The answer to ``POST /instances``: only a refusal that names *this*
    instance parks its study -- Orthanc itself saying it cannot take the file
    (400 Bad file format and the like), a front refusing its size (413) or its
    type (415).  Anything else (404 from a routing mistake, 401/403, 5xx, a
    timeout) is the link's or the configuration's: backoff, never a park."""
    if 200 <= status < 300:
        return None
    detail = _details(body)
    if status == 400 and _orthanc_answer(body):
        return RefusedError(f"HTTP 400: {detail}")
    if status == 413:
        return RefusedError(f"HTTP 413: the instance is larger than the upstream's front accepts ({detail})")
    if status == 415:
        return RefusedError(f"HTTP 415: the upstream does not accept this content ({detail})")
    return classify(status, body)


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
        self._ssl_files = self._tls_files() if self.scheme == "https" else None
        self._ssl = self._context() if self.scheme == "https" else None
        #: None until the first receiver call tells
        self.receiver_available: bool | None = None
        headers = {"User-Agent": "kontur-replication"}
        if upstream.username is not None:
            token = base64.b64encode(f"{upstream.username}:{upstream.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.headers = headers

    def _context(self) -> ssl.SSLContext:
        """Trust the regional CA and nothing else: never the system's CAs."""
        if not self.upstream.ca_file:
            raise ValueError(f"{self.upstream.name}: an https upstream needs ca_file (the regional CA); "
                             "refusing to fall back to the system's certificate authorities")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_verify_locations(cafile=self.upstream.ca_file)
        if self.upstream.cert_file:
            ctx.load_cert_chain(self.upstream.cert_file, self.upstream.key_file)
        return ctx

    def _tls_files(self) -> tuple:
        """What identifies the CA bundle, certificate and key on disk: a deploy replaces
        them (a renewed certificate, a CA rotation's bundle) by rename."""
        out = []
        for path in (self.upstream.ca_file, self.upstream.cert_file, self.upstream.key_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            out.append((path, None) if st is None else (path, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _current_context(self) -> ssl.SSLContext:
        """The TLS context, made again when its files changed since (for a new
        connection only; an unreadable new file keeps the last good context)."""
        files = self._tls_files()
        if files != self._ssl_files:
            try:
                self._ssl = self._context()
                self._ssl_files = files
            except (OSError, ssl.SSLError, ValueError):
                pass
        return self._ssl

    # --- connection -----------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._ssl = self._current_context()
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

    def _send_dicom(self, path: str, data: bytes, should_abort: Callable[[], bool] | None,
                    extra_headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/dicom", **(extra_headers or {})}
        if self.pacer.capped:
            return self.request("POST", path, self._paced_body(data, should_abort), headers, length=len(data))
        self.pacer.bytes_total += len(data)
        return self.request("POST", path, data, headers, length=len(data))

    def post_instance(self, data: bytes, should_abort: Callable[[], bool] | None = None) -> dict:
        """Store one DICOM instance upstream; returns Orthanc's answer
        (``Status`` is ``Success`` or ``AlreadyStored``)."""
        status, body = self._send_dicom("instances", data, should_abort)
        err = classify_store(status, body)
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

    # --- verification ------------------------------------------------------------

    def _get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        err = classify(status, body)
        if err is not None:
            raise err
        try:
            return json.loads(body)
        except ValueError:
            raise TransientError(f"the upstream answered GET {path} with something else than JSON") from None

    def study_instance_ids(self, study_id: str) -> set[str]:
        """Orthanc IDs of the instances the upstream holds for this study (empty if none)."""
        status, body = self.request("GET", f"studies/{study_id}/series")
        if status == 404 and _orthanc_answer(body) or status == 404 and not body.strip():
            return set()                      # Orthanc: unknown study (not a routing mistake)
        err = classify(status, body)
        if err is not None:
            raise err
        try:
            return {i for s in json.loads(body) for i in s.get("Instances", [])}
        except (ValueError, AttributeError, TypeError):
            raise TransientError("the upstream's study listing is not what Orthanc answers") from None

    def _receiver(self, route: str, payload: dict) -> Any:
        """POST to one of the upstream plugin's receiver routes."""
        if self.receiver_available is False:
            raise NoReceiver(route)
        body = json.dumps(payload, sort_keys=True).encode()
        status, answer = self.request("POST", f"kontur/{route}", body, {"Content-Type": "application/json"})
        if status in (404, 405, 503) and not _kontur_answer(answer):
            self.receiver_available = False
            raise NoReceiver(route)
        err = classify(status, answer)
        if err is not None:
            if 400 <= status < 500 and _kontur_answer(answer) and status not in (401, 403):
                raise RefusedError(f"HTTP {status}: {_details(answer)}")
            raise err
        self.receiver_available = True
        try:
            return json.loads(answer)
        except ValueError:
            raise TransientError(f"the upstream's kontur/{route} answered something else than JSON") from None

    def digests(self, study_ids: list[str]) -> dict[str, tuple[int, str]]:
        """(instance count, set digest) upstream per study (0 and the empty
        digest when it holds none), from the upstream's index: its receiver
        route, ``DIGEST_BATCH`` studies a request; without the receiver, one
        listing per study."""
        from .reconcile import set_digest
        out: dict[str, tuple[int, str]] = {}
        todo = list(study_ids)
        while todo:
            batch, todo = todo[:DIGEST_BATCH], todo[DIGEST_BATCH:]
            try:
                answer = self._receiver("digests", {"studies": batch})
                got = answer.get("studies", {}) if isinstance(answer, dict) else {}
                for sid in batch:
                    d = got.get(sid) or {}
                    out[sid] = (int(d.get("instances", 0)), str(d.get("digest") or set_digest(())))
                continue
            except NoReceiver:
                pass
            for sid in batch:
                ids = self.study_instance_ids(sid)
                out[sid] = (len(ids), set_digest(ids))
        return out

    def patients(self, people: list[dict]) -> dict[str, dict] | None:
        """Issue 10: the upstream's word on each PatientID (held, conflict);
        None when the upstream has no kontur receiver to ask."""
        try:
            answer = self._receiver("patients", {"patients": people})
        except NoReceiver:
            return None
        return answer.get("patients", {}) if isinstance(answer, dict) else {}

    def md5s(self, instance_ids: list[str]) -> dict[str, str | None]:
        """The MD5 the upstream stored for each instance (None: not held there)."""
        out: dict[str, str | None] = {}
        for k in range(0, len(instance_ids), DIGEST_BATCH):
            batch = instance_ids[k:k + DIGEST_BATCH]
            answer = self._receiver("md5", {"instances": batch})
            got = answer.get("instances", {}) if isinstance(answer, dict) else {}
            for iid in batch:
                out[iid] = got.get(iid)
        return out

    def retire(self, *, retire: list[str], requires: list[str], reason: str, correction: str,
               requires_instances: dict[str, int] | None = None) -> dict:
        """Ask the upstream to delete what this node sent it of ``retire``
        (studies, series or instances), once it holds every study in
        ``requires`` (with at least ``requires_instances`` instances)."""
        return self._receiver("retire", {"retire": retire, "requires": requires, "reason": reason,
                                          "correction": correction, "requires_instances": requires_instances or {}})

    def replace_instance(self, data: bytes, *, instance_id: str, reason: str, reconstruct: bool = False) -> dict:
        """Replace the upstream's copy of one instance (same UIDs, other content)."""
        if self.receiver_available is False:
            raise NoReceiver("replace")
        # Orthanc gives a plugin's POST callback no query arguments: they travel as headers
        extra = {"X-Kontur-Instance": instance_id, "X-Kontur-Reason": urllib.parse.quote(reason[:200])}
        if reconstruct:
            extra["X-Kontur-Reconstruct"] = "1"
        status, body = self._send_dicom("kontur/replace", data, None, extra)
        if status in (404, 405, 503) and not _kontur_answer(body):
            self.receiver_available = False
            raise NoReceiver("replace")
        err = classify_store(status, body)
        if err is not None:
            if 400 <= status < 500 and _kontur_answer(body) and status not in (401, 403):
                raise RefusedError(f"HTTP {status}: {_details(body)}")
            raise err
        return json.loads(body)

    def ping(self) -> dict:
        return self._get_json("system")


def _kontur_answer(body: bytes) -> bool:
    """Is this an answer written by kontur's receiver (JSON with "error" or "studies", ...)?"""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and "kontur" in data
