# SPDX-License-Identifier: AGPL-3.0-or-later
"""Telling the HL7 service a study's steps on this node (issue 12): the
outbox's ``events`` (archived, validated / incomplete / quarantined,
delivered), in order, over the service's Unix socket, one JSON line each,
each answered ``ok`` once the service has committed it
(``services/kontur_hl7/events.py``).  The caller moves its position only
past what was acknowledged: at least once, never lost."""
from __future__ import annotations

import json
import socket


def send(path: str, events: list[dict], timeout: float = 10.0) -> int:
    """How many of ``events`` (from the first) the service acknowledged;
    raises OSError when it cannot be reached."""
    done = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        f = s.makefile("rwb")
        for ev in events:
            line = json.dumps({"kind": ev["kind"], "study_id": ev["study_id"], "study_uid": ev.get("study_uid"),
                               "at": ev["at"], "detail": ev.get("detail")}, ensure_ascii=False)
            f.write(line.encode("utf-8") + b"\n")
            f.flush()
            answer = f.readline().decode("utf-8", "replace").strip()
            if answer != "ok":
                raise OSError(f"the HL7 service did not take event {ev.get('id')}: {answer or 'no answer'}")
            done += 1
    return done
