# SPDX-License-Identifier: AGPL-3.0-or-later
"""Repeatable pseudonyms (seed 003: one pseudonymous patient identifier across
sources): keyed functions of the patient's identifier, of the original UIDs
and of the patient for the date offset.

The key is the region's research secret, kept in kontur's secrets store and
on the MIAC's nodes that export; never on the research node.  HMAC-SHA-256
(the standard library) with a label per use, so a pseudonym, a UID and an
offset never share bits.  Same key and input, same output: the same patient
from any hospital and any run gets one pseudonym, the same instance one new
SOP Instance UID.
"""
from __future__ import annotations

import hashlib
import hmac

#: UIDs of the form 2.25.<128-bit integer> (PS3.5 B.2): no registered root is needed
UID_ROOT = "2.25."
MIN_SHIFT_DAYS, SPAN_SHIFT_DAYS = 30, 3650


class Keys:
    def __init__(self, secret: bytes, region_code: str = ""):
        if not isinstance(secret, bytes) or len(secret) < 32:
            raise ValueError("the research key must be at least 32 bytes (kontur's secrets store makes it)")
        self._secret = secret
        self.prefix = f"R{region_code}-" if region_code else "R-"

    def _mac(self, label: str, *parts: str) -> bytes:
        msg = "\x00".join((label,) + parts).encode("utf-8")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def patient(self, issuer: str, patient_id: str) -> str:
        """The pseudonym of (issuer, patient ID): Patient ID and Patient's Name in the research copy."""
        return self.prefix + self._mac("patient", issuer, patient_id)[:8].hex().upper()

    def uid(self, original: str) -> str:
        return UID_ROOT + str(int.from_bytes(self._mac("uid", original)[:16], "big"))

    def date_shift_days(self, issuer: str, patient_id: str) -> int:
        """The patient's offset, back in time: 30 days to 10 years, the same for all their studies."""
        n = int.from_bytes(self._mac("dates", issuer, patient_id)[:4], "big")
        return -(MIN_SHIFT_DAYS + n % SPAN_SHIFT_DAYS)
