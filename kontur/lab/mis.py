"""A hospital's MIS for the lab: an MLLP listener that records every HL7 v2
message it receives and answers with an HL7 acknowledgement.

Run inside the MIS's network namespace by ``kontur lab up``::

    python -m kontur.lab.mis --bind 198.18.0.12 --port 2575 --log mis-onco.jsonl

Framing (MLLP: <VT> message <FS><CR>) is plain stdlib sockets: three bytes
need no library, and owning the loop lets each message be written to disk
(flush + fsync) before it is acknowledged, so an ACK means "recorded".
Parsing and the ACK come from python-hl7, which gets the MSH field swap
and MSA details right.  Each received message is one JSON line:
``{"time", "peer", "type", "control_id", "ack", "charset", "message"}``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
#: refuse messages bigger than this (a sender that never sends <FS><CR>)
MAX_MESSAGE = 16 * 1024 * 1024


def decode(raw: bytes) -> tuple[str, str]:
    """Text and charset of a message: UTF-8, else CP1251 (the region's legacy systems)."""
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("cp1251", errors="replace"), "cp1251"


def frames(sock: socket.socket) -> Iterator[bytes]:
    """Messages from an MLLP stream; bytes outside <VT>...<FS><CR> are skipped."""
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        while True:
            start = buf.find(VT)
            if start < 0:
                buf = b""
                break
            end = buf.find(FS + CR, start)
            if end < 0:
                buf = buf[start:]
                if len(buf) > MAX_MESSAGE:
                    raise ValueError(f"message larger than {MAX_MESSAGE} bytes without an end")
                break
            yield buf[start + 1:end]
            buf = buf[end + 2:]


def frame(text: str) -> bytes:
    return VT + text.encode("utf-8") + FS + CR


def acknowledge(text: str, application: str, facility: str) -> tuple[str, dict[str, str]]:
    """The ACK for a received message, and what was learnt from it (type, control id)."""
    normalised = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    ack_id = uuid.uuid4().hex[:20]
    try:
        msg = hl7.parse(normalised)
        msh = msg.segment("MSH")
        info = {"type": str(msh[9]), "control_id": str(msh[10])}
        ack = msg.create_ack(ack_code="AA", message_id=ack_id, application=application, facility=facility)
        return str(ack).rstrip("\r") + "\r", info | {"ack": "AA"}
    except Exception as exc:  # noqa: BLE001 -- anything unparseable is recorded, and rejected
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        reason = str(exc).replace("|", " ").replace("\r", " ")[:80]
        ack = (f"MSH|^~\\&|{application}|{facility}|||{now}||ACK|{ack_id}|P|2.5\r"
               f"MSA|AR||{reason}\r")
        return ack, {"type": "", "control_id": "", "ack": "AR", "error": reason}


class Recorder:
    """Appends one JSON line per message; durable before the ACK is sent."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every message a lab MIS recorded, oldest first."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def make_server(bind: str, port: int, log: Path, application: str, facility: str) -> socketserver.TCPServer:
    recorder = Recorder(log)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            peer = self.client_address[0]
            try:
                for raw in frames(self.request):
                    text, charset = decode(raw)
                    ack, info = acknowledge(text, application, facility)
                    recorder.record({"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                                     "peer": peer, **info, "charset": charset, "message": text})
                    self.request.sendall(frame(ack))
            except (OSError, ValueError) as exc:
                print(f"connection from {peer}: {exc}", file=sys.stderr, flush=True)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    return Server((bind, port), Handler)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kontur.lab.mis", description=__doc__.splitlines()[0])
    p.add_argument("--bind", required=True, help="address to listen on")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("--log", required=True, type=Path, help="JSON-lines file of received messages")
    p.add_argument("--application", default="KONTUR_LAB_MIS", help="MSH-3 of the ACKs")
    p.add_argument("--facility", default="MIS", help="MSH-4 of the ACKs")
    args = p.parse_args(argv)
    try:
        server = make_server(args.bind, args.port, args.log, args.application, args.facility)
    except OSError as exc:
        print(f"cannot listen on {args.bind}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"MIS listening on {args.bind}:{args.port}, recording to {args.log}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
