# SPDX-License-Identifier: AGPL-3.0-or-later
"""A study's steps on this node, from Orthanc's kontur plugin (issue 12):
archived (complete here), validated / incomplete / quarantined, delivered to
the TsAMI.  The plugin keeps them in its outbox and tells the service over a
Unix socket, one JSON object per line::

    {"kind": "delivered", "study_id": "...", "study_uid": "1.2...", "at": 1764590000.1, "detail": "..."}

and the service answers ``ok`` once the event is committed (``store.study_event``:
kept for the study's status, and for an ordered study told to the MIS), or
``error: ...``.  The plugin moves on only after ``ok``: at least once, and the
same event twice is kept once.  A local socket, owned by the ``orthanc``
user both run as: no port, no password.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("kontur-hl7")
MAX_LINE = 64 * 1024


async def serve(store, path: str) -> asyncio.AbstractServer:
    sock = Path(path)
    sock.parent.mkdir(parents=True, exist_ok=True)
    if sock.exists() or sock.is_symlink():
        sock.unlink()                    # left by a killed predecessor

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                if len(line) > MAX_LINE:
                    writer.write(b"error: the line is too long\n")
                    break
                try:
                    ev = json.loads(line)
                    what = await loop.run_in_executor(None, lambda: store.study_event(
                        str(ev["kind"]), study_id=str(ev["study_id"]), study_uid=ev.get("study_uid") or None,
                        at=float(ev["at"]), detail=ev.get("detail")))
                    log.info("study %s %s: %s", ev.get("study_id"), ev.get("kind"), what)
                    writer.write(b"ok\n")
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("an event from the plugin refused: %s", exc)
                    writer.write(f"error: {exc}\n".encode())
                except Exception as exc:  # noqa: BLE001 - the database: the plugin tries again
                    log.error("an event from the plugin not stored: %s", exc)
                    writer.write(f"error: not stored: {exc}\n".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path=str(sock), limit=MAX_LINE + 1024)
    os.chmod(sock, 0o660)
    log.info("events from the node's Orthanc plugin on %s", sock)
    return server
