# SPDX-License-Identifier: AGPL-3.0-or-later
"""The MLLP listener: the hospital's MIS connects, sends HL7 v2 messages
framed <VT> message <FS><CR>, and gets one ACK per message.

    python3 -m kontur_hl7.server --config /etc/kontur/hl7.json

Framing is asyncio streams: three bytes of framing need no library, and owning
the loop gives what python-hl7's MLLP server does not -- the bytes before
decoding (its reader decodes with one codec fixed in advance; MSH-18 decides
here), a size limit, an idle timeout, and the ACK only after the message is
committed.  Parsing is python-hl7 (Debian's python3-hl7).

Per connection, messages are answered in order; a bad one is answered and
the next is read.  Bytes outside a frame are logged and dropped (there is no
message to answer); a frame over ``max_message_bytes`` is read to its end,
kept (its first 64 KiB) and answered AR; a client silent for
``idle_timeout_seconds`` is disconnected.  No patient data in the log: a
line names the control ID, the type, the answer and the HL7 error code.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import traceback
from pathlib import Path

from . import ack, codec, orders
from .db import DatabaseError, describe
from .store import Store
from .worklist import Site

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"
KEEP_OVERSIZE = 64 * 1024
log = logging.getLogger("kontur-hl7")


def database(cfg: dict) -> dict:
    """The configuration's ``database`` (:mod:`.db`); SQLite in ``state_dir`` without one."""
    return cfg.get("database") or {"sqlite": str(Path(cfg["state_dir"]) / "hl7.sqlite3")}


class Service:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.site = Site.from_policy(cfg.get("site") or {})
        self.database = database(cfg)
        self.store = Store(self.database)
        self.store.notify = cfg.get("notify")       # notifications to the MIS, when configured
        self.max_bytes = int(cfg.get("max_message_bytes", 4 * 1024 * 1024))
        self.idle = float(cfg.get("idle_timeout_seconds", 60))
        self.application = str(cfg.get("application", "KONTUR"))

    # --- one message -----------------------------------------------------------------

    def process(self, raw: bytes, peer: str, oversize: int = 0) -> bytes:
        """The ACK for one framed message (blocking: the database's commit)."""
        o = ack.original(raw)
        control, facility = o["control_id"], o["sending_facility"]
        try:
            prior = self.store.seen(facility, control)
        except Exception as exc:  # noqa: BLE001 - the disk: not stored, so not accepted
            return self._internal(raw, control, exc, store=False)
        if prior is not None:
            log.info("message %s from %r: a duplicate control ID, answered with the original ACK", control, facility)
            return prior
        if oversize:
            return self._refuse(raw[:KEEP_OVERSIZE], peer, control, facility, "AR", 100,
                                f"the message is {oversize} bytes; this service takes at most {self.max_bytes} "
                                "(its first 64 KiB are kept)", "MSH")
        try:
            dec = codec.decode(raw)
        except codec.CodecError as exc:
            return self._refuse(raw, peer, control, facility, "AR", 102, str(exc), "MSH^1^18")
        try:
            req = orders.parse(dec.text)
            answer = self.store.accept(
                req, self.site, raw=raw, codec=dec.codec, peer=peer,
                make_ack=lambda text, code="AA", error=None: ack.build(raw, code, text=text, error=error,
                                                                       codec=dec.codec,
                                                                       application=self.application))
        except orders.Reject as r:
            return self._refuse(raw, peer, control, facility, r.ack, r.code, r.text, r.where, codec_name=dec.codec)
        except Exception as exc:  # noqa: BLE001
            return self._internal(raw, control, exc, codec_name=dec.codec, peer=peer, facility=facility)
        log.info("message %s (%s) from %r: %s", control, req.type, facility, ack.code_of(answer))
        return answer

    def _refuse(self, raw: bytes, peer: str, control: str, facility: str, code: str, error: int, text: str,
                where: str, codec_name: str = "utf-8") -> bytes:
        answer = ack.build(raw, code, text=text, error=error, where=where, codec=codec_name,
                           application=self.application)
        try:
            self.store.refuse(facility=facility, control_id=control, raw=raw, ack=answer, code=code, reason=text,
                              peer=peer, mtype=ack.original(raw).get("trigger", ""), codec=codec_name)
        except Exception as exc:  # noqa: BLE001
            return self._internal(raw, control, exc, store=False)
        log.warning("message %s from %r: %s, HL7 error %s at %s", control or "(no control ID)", facility, code,
                    error, where or "-")
        return answer

    def _internal(self, raw: bytes, control: str, exc: Exception, *, store: bool = True, codec_name: str = "utf-8",
                  peer: str = "", facility: str = "") -> bytes:
        """AE for a message the service failed on: kept with the failure when
        the database takes it, else "not accepted -- send it again"."""
        if isinstance(exc, DatabaseError):      # the database, not the message: no traceback to read
            log.error("message %s: not stored: %s", control or "(no control ID)", exc)
            store = False
        else:
            log.error("message %s: %s\n%s", control or "(no control ID)", type(exc).__name__, traceback.format_exc())
        if store:
            text = f"internal error ({type(exc).__name__}); the message is kept, not applied"
            answer = ack.build(raw, "AE", text=text, error=207, codec=codec_name, application=self.application)
            try:
                self.store.refuse(facility=facility, control_id=control, raw=raw, ack=answer, code="AE",
                                  reason=f"{text}: {exc!r}", peer=peer)
                return answer
            except Exception as again:  # noqa: BLE001 - then it is not kept: say so
                log.error("message %s: not stored either: %s", control or "(no control ID)", again)
        text = "the service could not store the message; it was not accepted -- send it again"
        return ack.build(raw, "AE", text=text, error=207, codec=codec_name, application=self.application)

    # --- a connection ----------------------------------------------------------------

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = writer.get_extra_info("peername")
        peer = f"{addr[0]}:{addr[1]}" if addr else "?"
        loop = asyncio.get_running_loop()
        buf = bytearray()
        head: bytes | None = None   # inside a frame too big: its first bytes, kept
        skipped = 0                 # and how many bytes of it went by
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), self.idle)
                except asyncio.TimeoutError:
                    log.warning("%s: nothing received for %.0f s; disconnected", peer, self.idle)
                    return
                if not chunk:
                    if head is not None or buf.strip(b"\r\n \x0b"):
                        log.warning("%s: closed in the middle of a message (no <FS><CR>); nothing was "
                                    "acknowledged", peer)
                    return
                buf += chunk
                while buf:
                    if head is not None:
                        end = buf.find(FS + CR)
                        if end < 0:                 # keep the last byte: it may be the <FS>
                            skipped += len(buf) - 1
                            del buf[:-1]
                            break
                        skipped += end
                        del buf[:end + 2]
                        raw, size, head = head, skipped, None
                    else:
                        start = buf.find(VT)
                        if start < 0:
                            if buf.strip(b"\r\n "):
                                log.warning("%s: %d bytes outside an MLLP frame (no <VT>) dropped", peer, len(buf))
                            buf.clear()
                            break
                        if start > 0:
                            if buf[:start].strip(b"\r\n "):
                                log.warning("%s: %d bytes before <VT> dropped", peer, start)
                            del buf[:start]
                        end = buf.find(FS + CR)
                        if end < 0:
                            if len(buf) > self.max_bytes:
                                head, skipped = bytes(buf[1:KEEP_OVERSIZE + 1]), len(buf) - 2
                                del buf[:-1]
                            break
                        raw, size = bytes(buf[1:end]), 0
                        del buf[:end + 2]
                    answer = await loop.run_in_executor(None, self.process, raw, peer, size)
                    writer.write(VT + answer + FS + CR)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.warning("%s: connection lost: %s", peer, exc)
        finally:
            writer.close()

    def start_mpps(self):
        """The MPPS SCP, when the configuration has an ``mpps`` section."""
        m = self.cfg.get("mpps")
        if not m:
            return None
        from . import mpps_scp  # noqa: PLC0415 - needs the shipped pynetdicom wheel
        devices = {d.aet: d.host for h in self.site.hospitals for d in h.devices}
        return mpps_scp.start(self.store, host=m.get("host", "0.0.0.0"), port=int(m.get("port", 0)),
                              ae_title=m.get("ae_title", "KONTUR_MPPS"), devices=devices)

    def start_attacher(self):
        """The reports' attacher, when the configuration has a ``reports`` section."""
        r = self.cfg.get("reports")
        if not r:
            return None
        from .attach import Attacher  # noqa: PLC0415 - needs the shipped pynetdicom wheel
        return Attacher(self.store, host=r.get("host", "127.0.0.1"), port=int(r["port"]),
                        called_aet=r["called_aet"], calling_aet=r.get("calling_aet", "KONTUR_HL7"),
                        retry_seconds=float(r.get("retry_seconds", 10)),
                        max_retry_seconds=float(r.get("max_retry_seconds", 600))).start()

    def start_sender(self):
        """The notifications' sender, when the configuration has a ``notify`` section."""
        n = self.cfg.get("notify")
        if not n:
            return None
        from .sender import Sender  # noqa: PLC0415
        endpoints = {f: (h["mis_host"], int(h["mis_port"])) for h in (self.cfg.get("site") or {}).get("hospitals", [])
                     if h.get("mis_host") and h.get("mis_port") for f in h.get("facilities", [])}
        return Sender(self.store, endpoints, retry_seconds=float(n.get("retry_seconds", 2)),
                      max_retry_seconds=float(n.get("max_retry_seconds", 300)),
                      timeout_seconds=float(n.get("timeout_seconds", 30))).start()

    async def serve(self, host: str, port: int, ready=None) -> None:
        scp = self.start_mpps()
        attacher = self.start_attacher()
        sender = self.start_sender()
        events = None
        if (self.cfg.get("events") or {}).get("socket"):
            from . import events as events_in  # noqa: PLC0415
            events = await events_in.serve(self.store, self.cfg["events"]["socket"])
        server = await asyncio.start_server(self.connection, host, port, limit=1 << 20)
        where = ", ".join(str(s.getsockname()) for s in server.sockets)
        log.info("listening for HL7 over MLLP on %s; state in %s", where, describe(self.database))
        if ready is not None:
            ready(server)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()
        if events is not None:
            events.close()
        if scp is not None:
            scp.shutdown()
        if attacher is not None:
            attacher.stop()
        if sender is not None:
            sender.stop()
        self.store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kontur-hl7", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the service's JSON configuration (rendered by kontur)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = json.loads(Path(args.config).read_text(encoding="utf-8"))
        listen = cfg["listen"]
        service = Service(cfg)
    except DatabaseError as exc:
        print(f"kontur-hl7: no state, so no message can be accepted: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"kontur-hl7: cannot use {args.config}: {exc}", file=sys.stderr)
        return 2
    asyncio.run(service.serve(listen.get("host", "0.0.0.0"), int(listen.get("port", 2575))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
