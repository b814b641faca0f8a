"""Fake local and upstream archives for the replicator's unit tests (no Orthanc).

They behave like Orthanc where the replicator depends on it: instance IDs
identify (patient, study, series, instance); ``/changes`` entries carry a
sequence number, and ``Last`` can be ahead of what the log still holds;
a deleted instance's changes disappear from the log; ``LastUpdate`` moves
when an instance arrives, not when one is deleted.  Each fake counts the calls
the tests care about.
"""
from __future__ import annotations

import copy
import hashlib

from kontur_plugins.replication.config import parse_policy
from kontur_plugins.replication.engine import Log, Replicator
from kontur_plugins.replication.local import NotFound
from kontur_plugins.replication.outbox import Outbox
from kontur_plugins.replication.transport import RefusedError, TransientError

try:  # these came with issue 9; the fakes also drive the code before it (to see tests fail there)
    from kontur_plugins.replication.local import StorageLost
    from kontur_plugins.replication.reconcile import set_digest
    from kontur_plugins.replication.transport import NoReceiver
except ImportError:  # pragma: no cover
    class StorageLost(Exception):
        pass

    class NoReceiver(Exception):
        pass

    def set_digest(ids):
        return hashlib.sha1("".join(i + "\n" for i in sorted(set(ids))).encode()).hexdigest()

from test_replication_config_decisions import GOOD  # noqa: E402


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class FakeLocal:
    """studies: {study_id: {"uid", "pid", "instances": {instance_id: bytes}, "last_update", "series": {iid: sid}}}"""

    def __init__(self):
        self.studies: dict[str, dict] = {}
        self.change_log: list[dict] = []
        self.last = 0
        self.deleted: list[str] = []
        self.fail_listing: set[str] = set()
        self.lost_files: set[str] = set()
        self.metadata_: dict[tuple[str, str, str], str] = {}
        self.calls: dict[str, int] = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def _log(self, kind, rid, rtype):
        self.last += 1
        self.change_log.append({"ChangeType": kind, "ID": rid, "ResourceType": rtype, "Seq": self.last})

    def add(self, sid, n, uid=None, pid="P", series="se1", log=True, content=b"", arriving=False):
        """``arriving``: Orthanc holds the study unstable (its IsStable false) until
        :meth:`stable`; otherwise it stands for one stored StableAge ago or more."""
        st = self.studies.setdefault(sid, {"uid": uid or f"1.2.{sid}", "pid": pid, "instances": {},
                                           "last_update": "1", "series": {}})
        new = []
        for k in range(n):
            st["n"] = st.get("n", 0) + 1
            iid = f"{sid}-i{st['n'] - 1}"
            st["instances"][iid] = iid.encode() * 10 + content
            st["series"][iid] = f"{sid}-{series}"
            new.append(iid)
            if log:
                self._log("NewInstance", iid, "Instance")
        st["last_update"] = str(int(st["last_update"]) + 1)
        st["stable"] = not arriving and st.get("stable", True)
        return new

    def put(self, sid, iid, data, log=True, series="se1"):
        """Store one given instance (e.g. again, with other content)."""
        st = self.studies.setdefault(sid, {"uid": f"1.2.{sid}", "pid": "P", "instances": {}, "last_update": "1",
                                           "series": {}})
        st["instances"][iid] = data
        st["series"][iid] = f"{sid}-{series}"
        st["last_update"] = str(int(st["last_update"]) + 1)
        if log:
            self._log("NewInstance", iid, "Instance")

    def stable(self, sid):
        if sid in self.studies:
            self.studies[sid]["stable"] = True
        self._log("StableStudy", sid, "Study")


    def restart_log(self):
        """The index was restored or rebuilt: the change log numbers from 1 again."""
        self.change_log = []
        self.last = 0

    def clear_log(self):
        """DELETE /changes: entries gone, Last stays."""
        self.change_log = []

    # --- what LocalArchive offers ---------------------------------------------------

    def study(self, sid):
        self._count("study")
        st = self.studies.get(sid)
        if st is None or not st["instances"]:
            return None
        return {"ID": sid, "LastUpdate": st["last_update"], "IsStable": st.get("stable", True),
                "MainDicomTags": {"StudyInstanceUID": st["uid"]},
                "PatientMainDicomTags": {"PatientID": st["pid"]},
                "Series": sorted(set(st["series"].values()))}

    def study_instance_ids(self, sid):
        self._count("study_instance_ids")
        if sid in self.fail_listing:
            raise RuntimeError("the index is on fire")
        st = self.studies.get(sid)
        return set(st["instances"]) if st and st["instances"] else None

    def instance_file(self, iid):
        if iid in self.lost_files:
            raise StorageLost(f"/instances/{iid}/file: Orthanc error 2006 (RegularFileExpected)")
        for st in self.studies.values():
            if iid in st["instances"]:
                return st["instances"][iid]
        return None

    def instance_md5(self, iid):
        data = self.instance_file(iid)
        return md5(data) if data is not None else None

    def metadata(self, level, rid, key):
        return self.metadata_.get((level, rid, key))

    def series(self, series_id):
        for sid, st in self.studies.items():
            insts = sorted(i for i, s in st["series"].items() if s == series_id)
            if insts:
                return {"ID": series_id, "ParentStudy": sid, "Instances": insts}
        return None

    def exists(self, level, rid):
        if level == "studies":
            return self.study(rid) is not None
        if level == "series":
            return self.series(rid) is not None
        return self.instance_file(rid) is not None

    def delete(self, level, rid):
        if level == "studies":
            ids = list((self.studies.get(rid) or {}).get("instances", {}))
        elif level == "series":
            ids = list((self.series(rid) or {}).get("Instances", []))
        else:
            ids = [rid]
        return any([self.delete_instance(i) for i in ids])

    def delete_instance(self, iid):
        for st in self.studies.values():
            if st["instances"].pop(iid, None) is not None:
                st["series"].pop(iid, None)
                self.deleted.append(iid)
                self.change_log = [c for c in self.change_log if c["ID"] != iid]
                return True
        return False

    def parent_study(self, iid):
        for sid, st in self.studies.items():
            if iid in st["instances"]:
                return sid
        return None

    def all_study_ids(self):
        self._count("all_study_ids")
        return [s for s, st in self.studies.items() if st["instances"]]

    def studies_page(self, since, limit):            # the old OFFSET paging (kept to measure it)
        self._count("studies_page")
        ids = sorted(s for s, st in self.studies.items() if st["instances"])[since:since + limit]
        return [self.study(s) for s in ids]

    def changes(self, since, limit):
        chunk = [c for c in self.change_log if c["Seq"] > since][:limit]
        return {"Changes": chunk, "Done": len(chunk) < limit, "Last": self.last}

    def last_change(self):
        return self.last

    def resolve_study(self, ident):
        if ident in self.studies:
            return [ident]
        return [s for s, st in self.studies.items() if st["uid"] == ident]

    def patient_studies(self, pid):
        return sorted(s for s, st in self.studies.items() if st["pid"] == pid)


class FakeUpstream:
    """held: {study_id: {instance_id}}, contents: {instance_id: bytes}."""

    def __init__(self, receiver=True):
        self.held: dict[str, set[str]] = {}
        self.contents: dict[str, bytes] = {}
        self.owner: dict[str, str] = {}
        self.down = False
        self.refuse: set[str] = set()
        self.posts: list[str] = []
        self.pacer = None
        self.pings = 0
        self.receiver_available = True if receiver else None
        self.has_receiver = receiver
        self.retired: list[dict] = []
        self.replaced: list[str] = []
        self.calls: dict[str, int] = {}
        self.local = None
        self.series_of: dict[str, str] = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def _check(self):
        if self.down:
            raise TransientError("cannot reach tsami at 10.42.0.10:443: Connection refused")

    def post_instance(self, data, should_abort=None):
        self._check()
        iid = _instance_id_of(data)
        if iid in self.refuse:
            raise RefusedError("HTTP 400: Bad file format")
        self.posts.append(iid)
        sid = iid.split("-i")[0]
        if iid in self.held.get(sid, set()):
            return {"Status": "AlreadyStored", "ID": iid}
        self.held.setdefault(sid, set()).add(iid)
        self.contents[iid] = data
        if self.local is not None:
            for st in self.local.studies.values():
                if iid in st["series"]:
                    self.series_of[iid] = st["series"][iid]
        return {"Status": "Success", "ID": iid}

    def study_instance_ids(self, sid):
        self._count("study_instance_ids")
        self._check()
        return set(self.held.get(sid, set()))

    def ping(self):
        self.pings += 1
        self._check()
        return {"Name": "tsami"}

    def digests(self, study_ids):
        self._count("digests")
        self._check()
        if not self.has_receiver:
            return {sid: (len(self.held.get(sid, ())), set_digest(self.held.get(sid, ()))) for sid in study_ids}
        return {sid: (len(self.held.get(sid, ())), set_digest(self.held.get(sid, ()))) for sid in study_ids}

    def study_counts(self, studies):                 # the old QIDO counts (kept to measure them)
        self._count("study_counts")
        self._check()
        return {sid: len(self.held.get(sid, ())) for sid, _, _ in studies}

    def md5s(self, ids):
        self._check()
        if not self.has_receiver:
            raise NoReceiver("md5")
        return {i: (md5(self.contents[i]) if i in self.contents else None) for i in ids}

    def retire(self, *, retire, requires, reason, correction, requires_instances=None):
        self._check()
        if not self.has_receiver:
            raise NoReceiver("retire")
        lacking = [s for s in requires if not self.held.get(s)]
        if lacking:
            raise TransientError(f"HTTP 409: not retiring: lacks {lacking}")
        deleted = 0
        for rid in retire:
            for sid, ids in list(self.held.items()):
                gone = set(ids) if sid == rid else {i for i in ids if rid in (i, self.series_of.get(i))}
                deleted += len(gone)
                ids -= gone
        self.retired.append({"retire": list(retire), "requires": list(requires), "reason": reason})
        return {"deleted": deleted, "absent": [], "foreign": 0}

    def replace_instance(self, data, *, instance_id, reason, reconstruct=False):
        self._check()
        self.contents[instance_id] = data
        self.replaced.append(instance_id)
        return {"replaced": instance_id}

    def abort(self):
        pass

    def close(self):
        pass


def _instance_id_of(data: bytes) -> str:
    """FakeLocal's instance bytes start with the ID repeated 10 times."""
    text = data.decode("latin-1")
    for n in range(1, len(text) // 10 + 1):
        if text[:n] * 10 == text[:n * 10]:
            cand = text[:n]
            if "-i" in cand:
                return cand
    return text[:20]


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        return self.t


def make(tmp_path, *, mode="all", gateway=False, windows=(), retention=None, gates=None, tuning=None,
         receiver=True, deidentify=False, local=None, up=None, clock=None, first=True, completed_of=None):
    doc = copy.deepcopy(GOOD)
    r = doc["replication"]
    r.update(mode=mode, gateway=gateway, windows=list(windows), retention_days=retention, bandwidth_mbit=None)
    r["upstream"].update(url="http://127.0.0.1:9/", ca_file=None, cert_file=None, key_file=None)
    r["tuning"] = {"retry_base_seconds": 10, "retry_max_seconds": 100, "stable_grace_seconds": 5,
                   **(tuning or {})}
    doc["state_dir"] = str(tmp_path)
    cfg = parse_policy(doc)
    local = local or FakeLocal()
    up = up or FakeUpstream(receiver)
    up.local = local
    clock = clock or Clock()
    logs: list[str] = []
    log = Log(logs.append, logs.append, logs.append, **({"deidentify": True} if deidentify else {}))
    eng = Replicator(cfg, local, Outbox(cfg.state_db), upstream_factory=lambda pacer: up, stable_age=10,
                     log=log, clock=clock, gates=gates, completed_of=completed_of)
    if first:
        eng.process_changes()          # first start: position at the end of /changes
    return eng, local, up, clock, logs


def delivered(eng, local, sid, n=1, **add):
    """A study stored here, stable, read from the feed and sent: the usual start of a test."""
    local.add(sid, n, **add)
    local.stable(sid)
    eng.process_changes()
    return drain(eng)


def urgent_during(eng, up, study, after_posts=2):
    """While the sender is at its ``after_posts``-th instance, an operator pushes ``study`` urgently."""
    real = up.post_instance

    def post_then_urgent(data, should_abort=None):
        answer = real(data, should_abort)
        if len(up.posts) == after_posts:
            eng.request(study=study, urgent=True)
        return answer

    up.post_instance = post_then_urgent


def drain(eng, limit=50):
    n = 0
    while n < limit and eng.send_next():
        n += 1
    return n


__all__ = ["FakeLocal", "FakeUpstream", "Clock", "make", "drain", "delivered", "urgent_during", "md5", "NotFound"]
