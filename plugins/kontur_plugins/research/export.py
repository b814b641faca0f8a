# SPDX-License-Identifier: AGPL-3.0-or-later
"""One study through one feed, over an injected archive (the TsAMI's Orthanc:
in the plugin, in-process; in tests and ``bench/``, its REST API).

    original instance (never changed) -> held back?  -> Orthanc /anonymize
    -> second pass -> leak scan -> delivered to the feed's destination,
    or held back with its reason

Nothing that fails is delivered: an instance that cannot be read, that
Orthanc cannot de-identify, or whose copy still carries a piece of its
identity is held back and reported, and the rest of the study goes on.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..transfer.ingest import write_dataset
from .deid import Context, held_back, second_pass, standard_uids
from .feeds import ResearchConfig, facts_of, matches
from .identity import Identity, Leak, clean_text, identity_of, leaks
from .keymap import KeyMap
from .pseudonyms import Keys


class Archive(Protocol):
    def study_instances(self, study_id: str) -> list[str]: ...
    def file(self, instance_id: str) -> bytes: ...
    def anonymize(self, instance_id: str, body: dict) -> bytes: ...


@dataclass
class Held:
    instance: str
    reason: str


@dataclass
class Outcome:
    feed: str
    study: str
    selected: bool
    reason: str
    pseudonym: str | None = None
    new_study_uid: str | None = None
    delivered: list[str] = field(default_factory=list)       # the research copies' SOP Instance UIDs
    held: list[Held] = field(default_factory=list)
    leaks: dict[str, list[Leak]] = field(default_factory=dict)
    #: instances this feed delivered in an earlier run (not sent again)
    already: int = 0

    def lines(self) -> list[str]:
        out = [f"feed {self.feed}, study {self.study}: {self.reason}"]
        if self.selected:
            out.append(f"  {len(self.delivered)} instance(s) delivered as {self.pseudonym}, "
                       f"{len(self.held)} held back")
            out += [f"  held back {h.instance}: {h.reason}" for h in self.held]
        return out


def patient_key(ds, link_issuers: tuple[str, ...]) -> tuple[str, str]:
    """(issuer, ID) the pseudonym is keyed on: a linking identifier if the patient carries one."""
    for item in ds.get("OtherPatientIDsSequence") or []:
        issuer = str(item.get("IssuerOfPatientID", "") or "").strip()
        pid = str(item.get("PatientID", "") or "").strip()
        if issuer in link_issuers and pid:
            return issuer, pid
    issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
    pid = str(ds.get("PatientID", "") or "").strip()
    if issuer and pid.startswith(issuer + ":"):
        pid = pid[len(issuer) + 1:]
    return issuer, pid


def _pydicom():
    import pydicom  # noqa: PLC0415 - Debian's python3-pydicom on the node
    return pydicom


def _read(data: bytes):
    return _pydicom().dcmread(io.BytesIO(data), force=True)


class Exporter:
    def __init__(self, config: ResearchConfig, keys: Keys, keymap: KeyMap, archive: Archive,
                 deliver: Callable[[str, bytes], None]):
        self.config, self.keys, self.keymap, self.archive, self.deliver = config, keys, keymap, archive, deliver
        self.standard = standard_uids()

    def export_study(self, feed_name: str, study_id: str) -> Outcome:
        feed = self.config.feeds[feed_name]
        originals: list[tuple[str, object]] = []
        out = Outcome(feed_name, study_id, False, "")
        for iid in self.archive.study_instances(study_id):
            try:
                originals.append((iid, _read(self.archive.file(iid))))
            except Exception as exc:  # noqa: BLE001 - unreadable: held back, named
                out.held.append(Held(iid, f"not readable as DICOM ({type(exc).__name__}: {exc})"))
        ok, why = matches(feed.select, facts_of([ds for _, ds in originals], self.config.hospitals))
        out.selected, out.reason = ok, why
        if not ok:
            out.held.clear()          # a study the feed does not select is untouched, not "held"
            return out
        identity = Identity()
        for _, original in originals:
            identity_of(original, self.standard, into=identity)
        for iid, original in originals:
            if self.keymap.exported(feed.name, iid):
                out.already += 1
                continue
            self._instance(feed, iid, original, identity, out)
        return out

    def _instance(self, feed, iid: str, original, identity: Identity, out: Outcome) -> None:
        reason = held_back(original, feed.profile)
        if reason:
            out.held.append(Held(iid, reason))
            return
        issuer, pid = patient_key(original, self.config.link_issuers)
        if not pid:
            out.held.append(Held(iid, "no Patient ID: the pseudonym cannot be made"))
            return
        pseudonym = self.keys.patient(issuer, pid)
        ctx = Context(self.keys, feed.profile, identity,
                      self.keys.date_shift_days(issuer, pid), pseudonym, self.standard)
        try:
            anon = _read(self.archive.anonymize(iid, feed.profile.orthanc_request(
                {"PatientID": pseudonym, "PatientName": pseudonym})))
            second_pass(anon, original, ctx)
            found = leaks(anon, ctx.identity)
            data = b"" if found else write_dataset(anon, _pydicom())
        except Exception as exc:  # noqa: BLE001 - a failed de-identification is held back, named
            # the error may quote a value of the instance: the reason is cleaned like a descriptor
            why = clean_text(str(exc).replace("^", " "), ctx.identity)[:300]
            out.held.append(Held(iid, f"de-identification failed ({type(exc).__name__}: {why})"))
            return
        if found:
            out.leaks[iid] = found
            out.held.append(Held(iid, "the copy still carries identity: " + "; ".join(map(str, found[:5]))))
            return
        new_study = str(anon.StudyInstanceUID)
        if out.pseudonym is None:              # the key first: no copy out there without its entry here
            self.keymap.record(pseudonym=pseudonym, issuer=issuer, patient_id=pid,
                               patient_name=str(original.get("PatientName", "") or ""),
                               birth_date=str(original.get("PatientBirthDate", "") or ""),
                               new_study_uid=new_study, original_study_uid=str(original.StudyInstanceUID),
                               feed=feed.name)
        self.deliver(feed.destination, data)
        self.keymap.mark_exported(feed.name, iid)
        out.pseudonym, out.new_study_uid = pseudonym, new_study
        out.delivered.append(str(anon.SOPInstanceUID))
