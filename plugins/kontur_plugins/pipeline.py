# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur's plugin pipeline, one stage after another behind one entry script.

    received instance -> [instance stages]             (none yet)
    stable study      -> [gates] -> policy -> outbox -> sender -> verifier

Orthanc 1.10 loads one PythonScript and accepts one received-instance
callback, so every kontur stage hangs off this pipeline.  A *gate* may hold a
study back (the transfer-package checks of a later issue); a held study is
kept with the reason and looked at again on its next stable event, operator
push or full pass.  Today's only gate lets everything through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StudyRef:
    study_id: str
    study_uid: str | None
    patient_id: str | None
    urgent: bool = False
    source: str = "stable"      # stable | operator | flag | full-pass | quiet


class Gate(Protocol):
    name: str

    def check(self, study: StudyRef) -> str | None:
        """None lets the study through; a string holds it back, with that reason."""


class PassGate:
    """The no-op gate: the transfer-package gate (R3) will take its place."""

    name = "pass"

    def check(self, study: StudyRef) -> str | None:
        return None


def run_gates(gates: list[Gate], study: StudyRef) -> str | None:
    """The first gate that holds the study back, with its reason.  A gate that
    fails holds the study (safe: it is kept and visible, not lost)."""
    for gate in gates:
        try:
            reason = gate.check(study)
        except Exception as exc:  # noqa: BLE001 - a broken gate must not lose or leak a study
            return f"gate {gate.name} failed: {exc!r}"
        if reason:
            return f"{gate.name}: {reason}"
    return None
