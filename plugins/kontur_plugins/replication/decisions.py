# SPDX-License-Identifier: AGPL-3.0-or-later
"""What the hospital's policy selects for the upstream (pure functions).

``all``        every study, when it is ready (stable)
``pathology``  only studies flagged as pathology (REST now, HL7 later), when ready
``on-demand``  nothing by itself
gateway        everything it receives (a gateway keeps no archive)

In every mode an operator can push a study or a patient's studies, and a study
once selected stays selected: instances that arrive later follow it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    send: bool
    reason: str


def on_ready(mode: str, gateway: bool, selected: bool, flagged: bool) -> Decision:
    """A study became ready (Orthanc's StableStudy, or quiet after a restart)."""
    if gateway:
        return Decision(True, "gateway: forwards everything it receives")
    if selected:
        return Decision(True, "new instances of a study already sent or queued")
    if mode == "all":
        return Decision(True, "policy all: the study is complete (stable)")
    if mode == "pathology":
        if flagged:
            return Decision(True, "policy pathology: flagged and stable")
        return Decision(False, "policy pathology: not flagged")
    return Decision(False, "policy on-demand: waits for an operator")


def on_flag(mode: str, gateway: bool, ready: bool) -> Decision:
    """A study was flagged as pathology."""
    if not ready:
        return Decision(False, "flag recorded; the study will go once it is stable")
    if mode == "pathology" or gateway or mode == "all":
        return Decision(True, "flagged pathology")
    return Decision(False, "flag recorded; policy on-demand sends nothing by itself")


def in_full_pass(mode: str, gateway: bool, selected: bool, flagged: bool) -> bool:
    """Does the periodic full pass compare this study with the upstream?"""
    if gateway or mode == "all" or selected:
        return True
    return mode == "pathology" and flagged
