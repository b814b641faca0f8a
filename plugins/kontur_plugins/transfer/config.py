# SPDX-License-Identifier: AGPL-3.0-or-later
"""The ``transfer`` section of the node's policy file (issue 10).

    "transfer": {"enabled": true, "repair_text": true, "issuer": "42-ONCO"}

Only nodes that take studies from devices and forward them (LAMIs and
gateways) have it enabled; the TsAMI stores what its downstream nodes send as
it is (a change there would make its copy differ from the LAMI's, and the
replicator compares them byte for byte).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..problems import ConfigProblems
from .rules import DEFAULT_PATHS, RULES, Settings


class TransferError(ConfigProblems):
    """The transfer section cannot be used; ``problems`` lists why."""


@dataclass(frozen=True)
class TransferConfig:
    enabled: bool = False
    repair_text: bool = False
    issuer: str | None = None
    #: local: Patient ID as the device wrote it; regional: ISSUER:ID (issue 10)
    patient_key: str = "local"
    reason: str = "no transfer section in the policy file"
    #: the package's rules; None: nothing is validated on this node
    validation: Settings | None = field(default=None)


def parse_transfer(doc: dict) -> TransferConfig:
    sec = doc.get("transfer")
    if sec is None:
        return TransferConfig()
    problems: list[str] = []
    if not isinstance(sec, dict):
        raise TransferError([f"transfer must be a mapping, not {type(sec).__name__}"])
    unknown = sorted(set(sec) - {"enabled", "repair_text", "issuer", "patient_key", "reason", "validation"})
    if unknown:
        problems.append(f"transfer has unknown key(s) {', '.join(unknown)}")
    enabled = sec.get("enabled", False)
    repair = sec.get("repair_text", True)
    for key, val in (("enabled", enabled), ("repair_text", repair)):
        if not isinstance(val, bool):
            problems.append(f"transfer.{key} must be true or false, not {val!r}")
    issuer = sec.get("issuer")
    if issuer is not None and (not isinstance(issuer, str) or not issuer or len(issuer) > 64
                               or "\\" in issuer or not issuer.isprintable()):
        problems.append(f"transfer.issuer must be 1-64 printable characters without a backslash "
                        f"(Issuer of Patient ID is a DICOM LO), not {issuer!r}")
    patient_key = sec.get("patient_key", "local")
    if patient_key not in ("local", "regional"):
        problems.append(f"transfer.patient_key is {patient_key!r}; expected local or regional")
    if patient_key == "regional" and enabled and not issuer:
        problems.append("transfer.patient_key regional needs transfer.issuer (the key is ISSUER:ID)")
    settings = _settings(sec.get("validation"), problems) if enabled else None
    if problems:
        raise TransferError(problems)
    return TransferConfig(enabled=bool(enabled), repair_text=bool(repair) and bool(enabled),
                          issuer=issuer if enabled else None, patient_key=str(patient_key),
                          reason=str(sec.get("reason") or ("enabled" if enabled else "disabled")),
                          validation=settings)


def _settings(sec, problems: list[str]) -> Settings | None:
    if sec is None:
        return None
    if not isinstance(sec, dict):
        problems.append("transfer.validation must be a mapping")
        return None
    mode = sec.get("mode", "enforce")
    if mode not in ("enforce", "warn"):
        problems.append(f"transfer.validation.mode is {mode!r}; expected enforce or warn")
    rules = sec.get("rules", list(RULES))
    if not isinstance(rules, list) or any(r not in RULES for r in rules):
        problems.append(f"transfer.validation.rules must be a list of {', '.join(RULES)}; got {rules!r}")
        rules = []
    paths = dict(DEFAULT_PATHS)
    for key, val in (sec.get("paths") or {}).items():
        if key not in DEFAULT_PATHS or not isinstance(val, list) or not all(isinstance(v, str) and v for v in val):
            problems.append(f"transfer.validation.paths.{key}: expected one of {', '.join(DEFAULT_PATHS)} "
                            f"with a list of attribute paths")
            continue
        paths[key] = list(val)
    cls = sec.get("classifier")
    version, codes = None, {}
    if cls is not None:
        if not isinstance(cls, dict) or not isinstance(cls.get("codes"), dict) or not cls.get("version"):
            problems.append("transfer.validation.classifier must have a version and codes (code: name)")
        else:
            version, codes = str(cls["version"]), {str(k): str(v) for k, v in cls["codes"].items()}
    return Settings(mode=str(mode), rules=frozenset(rules), paths=paths, classifier_version=version, codes=codes)
