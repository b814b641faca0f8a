# SPDX-License-Identifier: AGPL-3.0-or-later
"""This node's own Orthanc, seen through an injected REST caller.

The glue passes an object with ``get(uri) -> bytes``, ``post(uri, body) ->
bytes`` and ``delete(uri)`` backed by ``orthanc.RestApiGet`` & co., raising
:class:`NotFound` for unknown resources; tests pass one backed by HTTP.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from typing import Any, Iterator, Protocol

ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


class NotFound(Exception):
    pass


class StorageLost(Exception):
    """Orthanc's index knows the resource but its file cannot be read (Orthanc
    errors 13 InexistentFile, 2006 RegularFileExpected): storage loss on this
    node -- an alarm, never "deleted meanwhile"."""


class Rest(Protocol):
    def get(self, uri: str) -> bytes: ...
    def post(self, uri: str, body: bytes) -> bytes: ...
    def delete(self, uri: str) -> None: ...


def is_orthanc_id(value: str) -> bool:
    return bool(ORTHANC_ID.match(value))


class LocalArchive:
    def __init__(self, rest: Rest, cache_size: int = 20000):
        self.rest = rest
        self._series_study: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    def get_json(self, uri: str) -> Any:
        return json.loads(self.rest.get(uri))

    def _get_or_none(self, uri: str) -> Any:
        try:
            return self.get_json(uri)
        except NotFound:
            return None

    # --- studies ------------------------------------------------------------

    def get_json_or_none(self, uri: str) -> Any:
        return self._get_or_none(uri)

    def raw_or_none(self, uri: str) -> bytes | None:
        try:
            return self.rest.get(uri)
        except NotFound:
            return None

    def study(self, study_id: str) -> dict | None:
        return self._get_or_none(f"/studies/{study_id}")

    def study_instance_ids(self, study_id: str) -> set[str] | None:
        """Orthanc IDs of the study's instances (None if the study is not here).
        One call, IDs only: cheap even for studies of thousands of instances."""
        series = self._get_or_none(f"/studies/{study_id}/series")
        if series is None:
            return None
        return {i for s in series for i in s.get("Instances", [])}

    def instance_file(self, instance_id: str) -> bytes | None:
        """The DICOM file; None if the instance was deleted meanwhile.  Raises
        :class:`StorageLost` if the index has it but the storage does not."""
        try:
            return self.rest.get(f"/instances/{instance_id}/file")
        except NotFound:
            return None

    def instance_md5(self, instance_id: str) -> str | None:
        try:
            return self.rest.get(f"/instances/{instance_id}/attachments/dicom/md5").decode().strip()
        except NotFound:
            return None

    def metadata(self, level: str, resource_id: str, key: str) -> str | None:
        """One metadata item of a resource (``level``: studies, series, instances); None if absent."""
        try:
            return self.rest.get(f"/{level}/{resource_id}/metadata/{key}").decode("utf-8")
        except NotFound:
            return None

    def series(self, series_id: str) -> dict | None:
        return self._get_or_none(f"/series/{series_id}")

    def exists(self, level: str, resource_id: str) -> bool:
        return self._get_or_none(f"/{level}/{resource_id}") is not None

    def delete(self, level: str, resource_id: str) -> bool:
        try:
            self.rest.delete(f"/{level}/{resource_id}")
            return True
        except NotFound:
            return False

    def store(self, data: bytes) -> dict:
        return json.loads(self.rest.post("/instances", data))

    def reconstruct(self, study_id: str) -> None:
        """Rebuild the study's (and its patient's) main DICOM tags from the files:
        Orthanc keeps a patient's tags from its first instance otherwise."""
        self.rest.post(f"/studies/{study_id}/reconstruct", b"{}")

    def delete_instance(self, instance_id: str) -> bool:
        try:
            self.rest.delete(f"/instances/{instance_id}")
            return True
        except NotFound:
            return False

    def parent_study(self, instance_id: str) -> str | None:
        inst = self._get_or_none(f"/instances/{instance_id}")
        if inst is None:
            return None
        series = inst.get("ParentSeries")
        if series in self._series_study:
            self._series_study.move_to_end(series)
            return self._series_study[series]
        s = self._get_or_none(f"/series/{series}")
        if s is None:
            return None
        study = s["ParentStudy"]
        self._series_study[series] = study
        if len(self._series_study) > self._cache_size:
            self._series_study.popitem(last=False)
        return study

    def all_study_ids(self, chunk: int = 20000, overlap: int = 2000) -> Iterator[str]:
        """Every study ID held here (the full pass's work list), in chunks of the
        index's listing: one ``GET /studies`` of 183k IDs costs Orthanc ~70 MB
        to build, a chunk a tenth of it.  Chunks overlap, so up to ``overlap``
        studies deleted between two chunks shift none past the next one (an ID
        seen twice is harmless; a study added meanwhile is the feed's)."""
        step = chunk - overlap
        since = 0
        while True:
            ids = self.get_json(f"/studies?since={since}&limit={chunk}")
            yield from ids
            if len(ids) < chunk:
                return
            since += step

    # --- changes --------------------------------------------------------------

    def changes(self, since: int, limit: int) -> dict:
        return self.get_json(f"/changes?since={since}&limit={limit}")

    def last_change(self) -> int:
        return int(self.get_json("/changes?last").get("Last", 0))

    # --- lookups -------------------------------------------------------------

    def lookup(self, value: str) -> list[dict]:
        return json.loads(self.rest.post("/tools/lookup", value.encode("utf-8")))

    def resolve_study(self, ident: str) -> list[str]:
        """An Orthanc study ID or a StudyInstanceUID -> Orthanc study IDs held here."""
        if is_orthanc_id(ident):
            return [ident] if self.study(ident) is not None else []
        return sorted(r["ID"] for r in self.lookup(ident) if r.get("Type") == "Study")

    def patient_studies(self, patient_id: str) -> list[str]:
        out: list[str] = []
        for r in self.lookup(patient_id):
            if r.get("Type") == "Patient":
                p = self._get_or_none(f"/patients/{r['ID']}")
                if p:
                    out += p.get("Studies", [])
        return sorted(set(out))


def study_keys(study: dict) -> tuple[str | None, str | None]:
    """(StudyInstanceUID, PatientID) of an expanded study resource."""
    uid = (study.get("MainDicomTags") or {}).get("StudyInstanceUID")
    pid = (study.get("PatientMainDicomTags") or {}).get("PatientID")
    return uid, pid
