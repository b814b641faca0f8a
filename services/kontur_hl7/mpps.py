# SPDX-License-Identifier: AGPL-3.0-or-later
"""Modality Performed Procedure Step (PS3.4 F.7): what a device's N-CREATE
and N-SET mean for the orders (issue 11).  Pure: the request's attributes
(as plain values) in, the new state or an :class:`MppsError` with the DIMSE
status out.

``IN PROGRESS`` (N-CREATE)   the device started the order's procedure: its
                             item is taken off every other device's worklist
``COMPLETED`` (N-SET)        done: every item of the order leaves the worklist
``DISCONTINUED`` (N-SET)     stopped: the order is offered again

The link to the order is the Scheduled Step Attributes Sequence: Accession
Number, else Study Instance UID.  An MPPS of no known order (an unscheduled
procedure) is kept, unlinked.
"""
from __future__ import annotations

from dataclasses import dataclass

STATES = ("IN PROGRESS", "COMPLETED", "DISCONTINUED")
FINAL = ("COMPLETED", "DISCONTINUED")
# DIMSE statuses (PS3.7 C and PS3.4 F.7.2)
INVALID_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120


class MppsError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


@dataclass
class Step:
    sop_uid: str
    status: str
    aet: str
    accession: str = ""
    study_uid: str = ""


def created(sop_uid: str, attrs: dict, aet: str) -> Step:
    """An N-CREATE: ``attrs`` holds PerformedProcedureStepStatus and the
    linking keys (``accession``, ``study_uid``) read from the request."""
    if not sop_uid:
        raise MppsError(MISSING_ATTRIBUTE, "N-CREATE without an Affected SOP Instance UID")
    status = (attrs.get("status") or "").strip().upper()
    if status != "IN PROGRESS":
        raise MppsError(INVALID_VALUE, f"an MPPS is created IN PROGRESS (PS3.4 F.7.2.1); "
                                       f"Performed Procedure Step Status is {status or '(empty)'!r}")
    return Step(sop_uid, status, aet, attrs.get("accession") or "", attrs.get("study_uid") or "")


def updated(step: Step | None, sop_uid: str, attrs: dict, aet: str) -> Step:
    """An N-SET on ``step`` (None: not known here)."""
    if step is None:
        raise MppsError(NO_SUCH_INSTANCE, f"no MPPS {sop_uid} was created here")
    if step.status in FINAL:
        raise MppsError(PROCESSING_FAILURE, f"MPPS {sop_uid} is {step.status} already; a final step is not "
                                            "changed (PS3.4 F.7.2.2)")
    if step.aet != aet:
        raise MppsError(PROCESSING_FAILURE, f"MPPS {sop_uid} was created by {step.aet}, not {aet}")
    status = (attrs.get("status") or step.status).strip().upper()
    if status not in STATES:
        raise MppsError(INVALID_VALUE, f"Performed Procedure Step Status {status!r}; expected one of "
                                       + ", ".join(STATES))
    return Step(step.sop_uid, status, step.aet, step.accession, step.study_uid)
