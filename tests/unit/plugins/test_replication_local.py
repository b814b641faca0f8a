"""The local archive adapter: the full pass's work list read in overlapping chunks."""
from __future__ import annotations

import json
import re

from kontur_plugins.replication.local import LocalArchive


class ListingRest:
    """Orthanc's ``/studies?since=N&limit=M``: OFFSET paging over the IDs in
    sorted order (PostgreSQL index 4.0 sorts by public ID); ``between`` runs
    after each answer (studies deleted or added meanwhile)."""

    def __init__(self, ids, between=None):
        self.ids = sorted(ids)
        self.between = between
        self.calls = 0

    def get(self, uri):
        m = re.fullmatch(r"/studies\?since=(\d+)&limit=(\d+)", uri)
        assert m, uri
        since, limit = int(m.group(1)), int(m.group(2))
        answer = self.ids[since:since + limit]
        self.calls += 1
        if self.between:
            self.between(self)
        return json.dumps(answer).encode()


def test_every_study_is_listed_once_in_a_few_calls():
    ids = [f"s{k:06d}" for k in range(183_000)]
    rest = ListingRest(ids)
    got = list(LocalArchive(rest).all_study_ids())
    assert set(got) == set(ids) and rest.calls == 11          # 183k in chunks of 20k stepping 18k


def test_deletions_between_chunks_make_none_of_the_rest_missing():
    ids = [f"s{k:05d}" for k in range(50_000)]
    rng_state = {"k": 0}

    def delete_some(rest):
        # 1,500 of the studies already listed are deleted before the next chunk (a gateway cleaning up)
        start = rng_state["k"]
        del rest.ids[start:start + 1500]
        rng_state["k"] += 1000

    rest = ListingRest(ids, between=delete_some)
    got = set(LocalArchive(rest).all_study_ids(chunk=10_000, overlap=2_000))
    survivors = set(rest.ids)
    assert survivors <= got, f"{len(survivors - got)} studies still held were never listed"
