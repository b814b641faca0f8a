# SPDX-License-Identifier: AGPL-3.0-or-later
"""The notifications' sender: each queued notification (``store``) goes to
its hospital's MIS over MLLP and is done only when the MIS acknowledges it.
Glue: the message is ``notify``'s, the queue ``store``'s.

In order per MIS: while the oldest is not acknowledged, nothing after it
goes.  A MIS that cannot be reached (or answers AE: it cannot take it now)
is tried again, backing off from ``retry_seconds`` to ``max_retry_seconds``;
an AR (the MIS refuses that message for good) is kept with its reason and
the next one goes.  A connection per message: every MLLP listener takes
that, some take nothing else.
"""
from __future__ import annotations

import logging
import socket
import threading
import time

log = logging.getLogger("kontur-hl7")
VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def exchange(host: str, port: int, message: bytes, timeout: float) -> bytes:
    """Send one framed message, return the answer's bytes (its frame removed)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(VT + message + FS + CR)
        buf = b""
        while FS + CR not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("the MIS closed the connection without an acknowledgement")
            buf += chunk
            if len(buf) > 1 << 20:
                raise ConnectionError("the MIS's answer is not an MLLP frame")
    start = buf.find(VT)
    return buf[start + 1 if start >= 0 else 0:buf.find(FS + CR)]


def answer_code(answer: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-3) of an acknowledgement; ("", "") when it has no MSA."""
    for seg in answer.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            fields = seg.decode("utf-8", "replace").split(seg[3:4].decode() or "|")
            return (fields[1].strip().upper() if len(fields) > 1 else "",
                    fields[3].strip() if len(fields) > 3 else "")
    return "", ""


class Sender:
    def __init__(self, store, endpoints: dict[str, tuple[str, int]], *, retry_seconds: float = 2.0,
                 max_retry_seconds: float = 300.0, timeout_seconds: float = 30.0, poll_seconds: float = 5.0):
        self.store = store
        self.endpoints = dict(endpoints)
        self.retry, self.max_retry = float(retry_seconds), float(max_retry_seconds)
        self.timeout, self.poll = float(timeout_seconds), float(poll_seconds)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kontur-notify", daemon=True)
        self._down: set[tuple[str, int]] = set()    # MIS endpoints known unreachable (logged once per outage)

    def start(self) -> "Sender":
        self.thread.start()
        log.info("notifications to %s", ", ".join(f"{f} at {h}:{p}" for f, (h, p) in sorted(self.endpoints.items()))
                 or "no MIS")
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self.store.notify_wake.set()
        self.thread.join(10)

    def _loop(self) -> None:
        wait = 0.0
        while not self.stop_event.is_set():
            self.store.notify_wake.wait(wait)
            self.store.notify_wake.clear()
            if self.stop_event.is_set():
                break
            try:
                self.round()
            except Exception as exc:  # noqa: BLE001 - the database: the next round tries again
                log.error("notifications: %s", exc)
            wait = min(self.poll, self.retry)

    def round(self) -> int:
        sent = 0
        for facility, rows in self.store.notifications_due(time.time()).items():
            for r in rows:
                if self.stop_event.is_set():
                    return sent
                if not self.send(facility, r):
                    break               # in order: the rest waits for this one
                sent += 1
        return sent

    def _delay(self, r: dict) -> float:
        return min(self.max_retry, self.retry * 2 ** min(int(r.get("attempts") or 0), 12))

    def send(self, facility: str, r: dict) -> bool:
        """One notification; True when it is done (acknowledged, or refused for good)."""
        where = self.endpoints.get(facility)
        if where is None:
            self.store.notification_done(r["id"], ack_code="", state="refused",
                                         error=f"no MIS endpoint is declared for facility {facility!r}")
            log.warning("notification %s: no MIS endpoint for %r: kept, not sent", r["control_id"], facility)
            return True
        host, port = where
        try:
            answer = exchange(host, port, r["message"], self.timeout)
        except OSError as exc:
            self.store.notification_retry(r["id"], f"the MIS at {host}:{port}: {exc}", self._delay(r))
            if (host, port) not in self._down:
                self._down.add((host, port))
                log.warning("notifications: the MIS of %s at %s:%d cannot be reached (%s); they wait, in order",
                            facility, host, port, exc)
            return False
        if (host, port) in self._down:
            self._down.discard((host, port))
            log.info("notifications: the MIS of %s at %s:%d answers again", facility, host, port)
        code, text = answer_code(answer)
        if code in ("AA", "CA"):
            self.store.notification_done(r["id"], ack_code=code)
            log.info("notification %s (%s, accession %s) to %s: %s", r["control_id"], r["kind"], r["accession"],
                     facility, code)
            return True
        if code in ("AR", "CR"):
            self.store.notification_done(r["id"], ack_code=code, state="refused", error=text or "refused")
            log.warning("notification %s to %s: the MIS refused it (%s): %s; kept, the next one goes",
                        r["control_id"], facility, code, text)
            return True
        why = f"the MIS answered {code or 'without an MSA'}: {text}".strip()
        self.store.notification_retry(r["id"], why, self._delay(r))
        log.warning("notification %s to %s: %s; tried again later", r["control_id"], facility, why)
        return False
