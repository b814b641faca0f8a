# SPDX-License-Identifier: AGPL-3.0-or-later
"""The original-mode acknowledgement (HL7 v2.5 §2.9.2) of a message, built
from its raw MSH fields -- so a message python-hl7 cannot parse still gets an
ACK addressed back to its sender, with its control ID.  Pure.

``AA`` accepted (stored durably); ``AE`` cannot be applied (unknown order,
unknown device, ...); ``AR`` the message itself is wrong.  An error carries
MSA-3 (a sentence) and an ERR segment: ERR-2 where, ERR-3 the code of HL7
table 0357, ERR-4 severity, ERR-8 the sentence again.
"""
from __future__ import annotations

import datetime as dt
import itertools

from .codec import msh_fields

#: HL7 table 0357
ERROR_NAMES = {0: "Message accepted", 100: "Segment sequence error", 101: "Required field missing",
               102: "Data type error", 103: "Table value not found", 200: "Unsupported message type",
               201: "Unsupported event code", 202: "Unsupported processing id",
               203: "Unsupported version id", 204: "Unknown key identifier", 205: "Duplicate key identifier",
               206: "Application record locked", 207: "Application internal error"}
_COUNTER = itertools.count(1)


def escape(text: str) -> str:
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " "))


def original(raw: bytes) -> dict:
    """MSH facts of a message for its answer (empty strings where absent)."""
    f = msh_fields(raw) or []

    def at(n: int) -> str:          # MSH-n
        return f[n].decode("latin-1").replace("\x00", "").strip() if len(f) > n else ""
    trigger = at(9).split("^")[1] if "^" in at(9) else ""
    return {"sending_app": at(3), "sending_facility": at(4), "receiving_app": at(5),
            "receiving_facility": at(6), "control_id": at(10), "processing": at(11) or "P",
            "version": at(12) or "2.5", "trigger": trigger, "charset": at(18)}


def build(raw: bytes, code: str, *, text: str = "", error: int | None = None, where: str = "",
          codec: str = "utf-8", application: str = "KONTUR", now: dt.datetime | None = None) -> bytes:
    """The ACK of ``raw``: bytes in the message's own character set."""
    o = original(raw)
    now = now or dt.datetime.now(dt.timezone.utc)
    control = f"K{now:%Y%m%d%H%M%S}{next(_COUNTER):06d}"
    msh = "|".join(["MSH", "^~\\&", application, o["receiving_facility"] or o["receiving_app"],
                    o["sending_app"], o["sending_facility"], f"{now:%Y%m%d%H%M%S}", "",
                    f"ACK^{o['trigger']}^ACK" if o["trigger"] else "ACK", control, o["processing"],
                    o["version"], "", "", "", "", "", o["charset"]])
    segments = [msh.rstrip("|"), "|".join(["MSA", code, escape(o["control_id"]), escape(text)]).rstrip("|")]
    if error is not None:
        segments.append("|".join(["ERR", "", where, f"{error}^{ERROR_NAMES.get(error, '')}^HL70357",
                                  "E" if code != "AA" else "I", "", "", "", escape(text)]))
    body = "\r".join(segments) + "\r"
    try:
        return body.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return body.encode("utf-8", "replace")


def code_of(answer: bytes) -> str:
    """MSA-1 of an ACK this module built (AA, AE, AR)."""
    i = answer.find(b"\rMSA|")
    return answer[i + 5:i + 7].decode("ascii", "replace") if i >= 0 else "?"
