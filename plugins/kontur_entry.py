# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur's entry script for Orthanc's Python plugin (the one "PythonScript").

Thin glue, and the only file that imports ``orthanc``: it reads the policy
file named in Orthanc's configuration ("Kontur": {"PolicyFile": ...}), checks
it, builds the pipeline from ``kontur_plugins`` and registers callbacks only
if the check passed; otherwise it logs "disabled" with the reason and serves
only a status route that says so.

Callbacks never raise and never block: the OnChange callback only starts and
stops the worker threads (on ORTHANC_STARTED / ORTHANC_STOPPED), wakes them
on NewInstance / StableStudy and hands them DELETED events (which /changes
never shows); REST callbacks answer from the outbox.

On a node that takes studies from devices (LAMI, gateway) the received-instance
callback runs the transfer package's ingest stage (``kontur_plugins.transfer``):
text repaired to UTF-8, Issuer of Patient ID stamped; what it changed goes to
the node's audit trail, never to the log.

Every node serves the receiver routes (``/kontur/digests`` & co.) for the
nodes that replicate to it -- the TsAMI, whose own replication is disabled,
included.
"""
import base64
import datetime
import json
import os
import sys
import threading
import time
import traceback
from urllib.parse import quote

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import orthanc  # noqa: E402

from kontur_plugins.replication import api  # noqa: E402
from kontur_plugins.replication.config import PolicyError, load_policy, policy_path_from_orthanc  # noqa: E402
from kontur_plugins.replication.engine import Log, Replicator  # noqa: E402
from kontur_plugins.replication.local import LocalArchive, NotFound, StorageLost  # noqa: E402
from kontur_plugins.replication.outbox import Outbox  # noqa: E402
from kontur_plugins.replication.receiver import Receiver  # noqa: E402
from kontur_plugins.transfer import api as transfer_api  # noqa: E402
from kontur_plugins.transfer import ingest  # noqa: E402
from kontur_plugins.transfer.gate import TransferGate, ValidationStore, study_facts  # noqa: E402
from kontur_plugins.transfer.config import TransferConfig, TransferError, parse_transfer  # noqa: E402
from kontur_plugins import seen as seen_mod  # noqa: E402
from kontur_plugins import shares as shares_mod  # noqa: E402
from kontur_plugins import viewer  # noqa: E402
from kontur_plugins.worklist import announce as worklist_announce  # noqa: E402
from kontur_plugins.worklist import items as worklist_items  # noqa: E402
from kontur_plugins.worklist import status as worklist_status  # noqa: E402
from kontur_plugins.worklist import state as worklist_state  # noqa: E402
from kontur_plugins.worklist import updates as worklist_updates  # noqa: E402

PREFIX = "kontur"
# Orthanc error codes: 17 UnknownResource is "no such resource"; 13 InexistentFile and
# 2006 RegularFileExpected mean the index lists a file the storage does not have
_NOT_FOUND = {17}
_STORAGE_LOST = {13, 2006}
_LEVELS = {0: "patients", 1: "studies", 2: "series", 3: "instances"}


class OrthancRest:
    """This Orthanc's built-in REST API, in-process."""

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except orthanc.OrthancException as exc:
            code = exc.args[0] if exc.args else None
            code = getattr(code, "value", code)
            if code in _NOT_FOUND:
                raise NotFound(args[0]) from None
            if code in _STORAGE_LOST:
                raise StorageLost(f"{args[0]}: Orthanc error {code} ({exc.args[1] if len(exc.args) > 1 else exc})") from None
            raise

    def get(self, uri):
        return self._call(orthanc.RestApiGet, uri)

    def post(self, uri, body):
        return self._call(orthanc.RestApiPost, uri, body)

    def delete(self, uri):
        return self._call(orthanc.RestApiDelete, uri)


def _orthanc_config():
    try:
        return json.loads(orthanc.GetConfiguration())
    except Exception:  # noqa: BLE001
        return {}


def _caller(headers):
    """The login of the request (Orthanc checked its password before calling us)."""
    auth = (headers or {}).get("authorization") or ""
    if not auth.lower().startswith("basic "):
        return None
    try:
        return base64.b64decode(auth[6:].strip()).decode("utf-8").split(":", 1)[0] or None
    except Exception:  # noqa: BLE001
        return None


def _receiver_args(request):
    """Arguments of a receiver call: Orthanc passes a POST callback no query
    string, so they come as X-Kontur-* headers (percent-encoded)."""
    from urllib.parse import unquote
    args = dict(request.get("get") or {})
    for key, value in (request.get("headers") or {}).items():
        if key.startswith("x-kontur-"):
            args[key[len("x-kontur-"):]] = unquote(value)
    return args


def _answer(output, status, data, allow="GET", ctype=None):
    """A REST answer: 200 with its body, 405 with the allowed methods, else the
    status with the body as text (Python plugin 4.0: its UTF-8 length in bytes)."""
    if status == 200:
        output.AnswerBuffer(data, ctype or api.JSON)
    elif status == 405:
        output.SendMethodNotAllowed(allow)
    else:
        output.SendHttpStatus(status, data.decode("utf-8"), len(data))


def _internal_error(output, uri, exc, html=False):
    """Log what went wrong (the log, never the answer) and answer 500."""
    orthanc.LogError(f"{PREFIX}: REST {uri}: {exc!r}\n{traceback.format_exc()}")
    data = (viewer.not_shown(500, "internal error; see the Orthanc log").encode("utf-8") if html
            else b'{"error": "internal error; see the Orthanc log"}')
    try:
        output.SendHttpStatus(500, data.decode("utf-8"), len(data))
    except Exception:  # noqa: BLE001
        pass


class Plugin:
    def __init__(self):
        self.engine = None
        self.receiver = None
        self.disabled_reason = None
        self.node = None
        self.outbox = None
        self.transfer = TransferConfig()
        self.worklist_db = None      # the HL7 service's state, when this node answers the worklist
        self.worklist_events = None  # the HL7 service's socket for this node's study events
        self._announce_down = False
        self.worklist_expire_days = worklist_items.EXPIRE_DAYS
        self._worklist_cache = {}    # item (JSON) -> its DICOM dataset, built once
        self._adt_stop = threading.Event()
        self._adt_thread = None
        self.adt_counts = {"applied": 0, "patients_modified": 0, "failed": 0}
        self._audited = {}          # (study UID, original values) already in the audit trail
        # what the ingest stage did since Orthanc started (in /kontur/replication as "ingest")
        self.ingest_counts = {"seen": 0, "changed": 0, "unchanged": 0, "left_as_received": 0, "failed": 0}
        # the viewer link (issue 12): who may open what, and the shares (TsAMI)
        self.roles = {}             # KonturRoles: login -> rights, "hospital" for a scoped user
        self.issuers = {}           # Issuer of Patient ID -> hospital
        self.hospitals = frozenset()
        self.shares = None
        self._has_web_viewer = None
        self.seen = None            # the last study per device (issue 13: kontur check)

    def setup(self):
        config = _orthanc_config()
        path = policy_path_from_orthanc(config)
        try:
            cfg = load_policy(path)
        except PolicyError as exc:
            self.disabled_reason = f"policy {path}: " + "; ".join(exc.problems)
            orthanc.LogError(f"{PREFIX}: replication disabled: {self.disabled_reason}")
            return
        self.node = cfg.node
        self._setup_worklist(path)
        self._setup_viewer(config, path, cfg.state_dir)
        try:
            outbox = Outbox(cfg.state_db)
        except Exception as exc:  # noqa: BLE001
            self.disabled_reason = f"cannot open the outbox {cfg.state_db}: {exc}"
            orthanc.LogError(f"{PREFIX}: replication disabled: {self.disabled_reason}")
            return
        self.outbox = outbox
        self.seen = seen_mod.Seen(outbox, seen_mod.remote_aet_via(orthanc.RestApiGet), time.time,
                                  log_error=orthanc.LogError)
        self._setup_transfer(path)
        local = LocalArchive(OrthancRest())
        self.receiver = Receiver(local, outbox, time.time, log_warning=orthanc.LogWarning)
        if not cfg.enabled:
            self.disabled_reason = cfg.reason
            orthanc.LogWarning(f"{PREFIX}: replication disabled on {cfg.node}: {cfg.reason}")
            return
        try:
            stable_age = float(config.get("StableAge", 60))
            deidentify = bool(config.get("DeidentifyLogs", True))
            gates = None
            if self.transfer.enabled and self.transfer.validation is not None:
                gates = [TransferGate(self.transfer.validation, lambda sid: study_facts(local, sid),
                                      ValidationStore(outbox), time.time)]
            urgent_of = completed_of = None
            if self.worklist_db:
                db = self.worklist_db
                urgent_of = lambda row: worklist_items.urgent_order(db, row.get("study_uid"))  # noqa: E731
                completed_of = lambda uids: worklist_items.completed_studies(db, uids)  # noqa: E731
            self.engine = Replicator(
                cfg, local, outbox, stable_age=stable_age, gates=gates, urgent_of=urgent_of,
                completed_of=completed_of,
                log=Log(orthanc.LogInfo, orthanc.LogWarning, orthanc.LogError, deidentify=deidentify))
        except Exception as exc:  # noqa: BLE001 - e.g. unreadable client certificate
            self.disabled_reason = f"cannot start: {exc}"
            orthanc.LogError(f"{PREFIX}: replication disabled: {self.disabled_reason}\n{traceback.format_exc()}")
            self.engine = None
            return
        if self.transfer.enabled:
            self.engine.extra_status["ingest"] = lambda: dict(self.ingest_counts)
        if self.worklist_db:
            self.engine.extra_status["adt"] = lambda: {
                **self.adt_counts, "applied_through": int(self.outbox.get_meta("adt_applied") or 0)}
        orthanc.LogWarning(f"{PREFIX}: replication enabled on {cfg.node}: {self.engine.describe()}")

    def _setup_transfer(self, path):
        try:
            with open(path, encoding="utf-8") as fh:
                self.transfer = parse_transfer(json.load(fh))
        except (OSError, ValueError, TransferError) as exc:
            problems = "; ".join(getattr(exc, "problems", [str(exc)]))
            orthanc.LogError(f"{PREFIX}: transfer package disabled: policy {path}: {problems}")
            self.transfer = TransferConfig(reason=problems)
            return
        if self.transfer.enabled:
            orthanc.LogWarning(f"{PREFIX}: ingest stage on: text repair "
                               f"{'on' if self.transfer.repair_text else 'off'}, "
                               f"Issuer of Patient ID {self.transfer.issuer or '(not stamped)'}, "
                               f"patient key {self.transfer.patient_key}")

    def _setup_worklist(self, path):
        """The Modality Worklist: the HL7 service's items, where the policy says it keeps them."""
        try:
            with open(path, encoding="utf-8") as fh:
                section = json.load(fh).get("worklist") or {}
        except (OSError, ValueError):
            return
        if section.get("enabled") and section.get("db"):
            self.worklist_db = section["db"]
            self.worklist_events = section.get("events_socket")
            self.worklist_expire_days = int(section.get("expire_days", worklist_items.EXPIRE_DAYS))
            orthanc.LogWarning(f"{PREFIX}: modality worklist on: items from "
                               f"{worklist_state.describe(self.worklist_db)}")

    def _setup_viewer(self, config, path, state_dir):
        """Who may open a study through the viewer link; the shares where the policy keeps them."""
        self.roles = config.get("KonturRoles") or {}
        try:
            with open(path, encoding="utf-8") as fh:
                section = json.load(fh).get("viewer") or {}
        except (OSError, ValueError):
            return
        self.issuers = dict(section.get("issuers") or {})
        self.hospitals = frozenset(section.get("hospitals") or ())
        if section.get("shares"):
            self.shares = shares_mod.Shares(os.path.join(state_dir, "shares.sqlite3"))

    # --- the MIS's patient updates on stored studies (issue 11) ---------------

    def start_adt(self):
        if not self.worklist_db or self.outbox is None or self._adt_thread is not None:
            return
        self._adt_thread = threading.Thread(target=self._adt_loop, name="kontur-adt", daemon=True)
        self._adt_thread.start()

    def stop_adt(self):
        self._adt_stop.set()

    def _adt_loop(self):
        while not self._adt_stop.wait(2.0):
            try:
                self.apply_adt()
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                self.adt_counts["failed"] += 1
                orthanc.LogError(f"{PREFIX}: applying the MIS's patient updates: {exc!r}\n{traceback.format_exc()}")
            try:
                self.apply_pathology_results()
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                orthanc.LogError(f"{PREFIX}: the results' pathology flags: {exc!r}\n{traceback.format_exc()}")
            try:
                self.announce_events()
            except OSError as exc:   # the service is down or restarting: the events wait, in order
                if not self._announce_down:
                    orthanc.LogWarning(f"{PREFIX}: the HL7 service does not take the studies' events ({exc}); "
                                       "they wait")
                self._announce_down = True
            except Exception as exc:  # noqa: BLE001 - retried on the next round
                orthanc.LogError(f"{PREFIX}: telling the HL7 service: {exc!r}\n{traceback.format_exc()}")

    def announce_events(self) -> int:
        """The outbox's study events, in order, to the HL7 service (which tells the MIS)."""
        if not self.worklist_events:
            return 0
        after = int(self.outbox.get_meta("events_announced") or 0)
        rows = self.outbox.events_after(after)
        if not rows:
            return 0
        done = worklist_announce.send(self.worklist_events, rows)
        if done:
            self.outbox.set_meta("events_announced", str(rows[done - 1]["id"]))
        if self._announce_down:
            orthanc.LogWarning(f"{PREFIX}: the HL7 service takes the studies' events again")
            self._announce_down = False
        return done

    def apply_pathology_results(self) -> int:
        """Results that mark pathology flag their studies (issue 12; reglament
        §3.2): under the ``pathology`` policy those go to the TsAMI.  A flag is
        never withdrawn here: a corrected result without pathology leaves it."""
        if self.engine is None:
            return 0
        # the service's clock orders its rows; a minute of overlap covers transactions
        # that committed out of their order (a flag set twice is the same flag)
        after = float(self.outbox.get_meta("results_flagged_through") or 0)
        done, latest = 0, after
        for r in worklist_items.pathology_results(self.worklist_db, after - 60):
            if not self.outbox.is_flagged(r["study_uid"]):
                self.engine.flag(r["study_uid"], True, source=f"result {r['control_id']} (HL7 ORU^R01)")
                orthanc.LogWarning(f"{PREFIX}: study of accession {r['accession']} flagged pathology by its "
                                   f"result {r['control_id']}")
                done += 1
            latest = max(latest, float(r["updated_at"]))
        if latest > after:
            self.outbox.set_meta("results_flagged_through", repr(latest))
        return done

    def _modify(self, uri: str, body: str) -> dict:
        """Orthanc's modify as a job, waited for here.  Not the synchronous call:
        the job stores the new instances through this plugin's received-instance
        callback, which needs the interpreter a synchronous RestApiPost would
        hold for the whole job (a deadlock)."""
        job = json.loads(orthanc.RestApiPost(uri, json.dumps({**json.loads(body), "Asynchronous": True})))
        deadline = time.monotonic() + 3600
        while not self._adt_stop.wait(0.2):
            info = json.loads(orthanc.RestApiGet(f"/jobs/{job['ID']}"))
            if info.get("State") == "Success":
                return info.get("Content") or {}
            if info.get("State") == "Failure":
                raise RuntimeError(f"Orthanc's modify job {job['ID']} failed: {info.get('ErrorDescription')} "
                                   f"{info.get('ErrorDetails', '')}".strip())
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc's modify job {job['ID']} did not finish in an hour")
        raise RuntimeError("Orthanc is stopping")

    def apply_adt(self) -> int:
        """Apply the HL7 service's recorded ADTs, in order, to the studies stored here."""
        regional = self.transfer.enabled and self.transfer.patient_key == "regional"
        after = int(self.outbox.get_meta("adt_applied") or 0)
        done = 0
        for u in worklist_updates.pending(self.worklist_db, after):
            key = worklist_updates.stored_id(u["old_id"], u["issuer"], regional)
            found = json.loads(orthanc.RestApiPost("/tools/find", json.dumps(
                {"Level": "Patient", "Query": {"PatientID": key}, "Expand": False})))
            level = worklist_updates.level(u)
            body = json.dumps(worklist_updates.modify_request(u, regional))
            for pid in found:
                targets = ([pid] if level == "patients" else
                           [s["ID"] for s in json.loads(orthanc.RestApiGet(f"/patients/{pid}/studies"))])
                for rid in targets:
                    res = self._modify(f"/{level}/{rid}/modify", body)
                    self.outbox.audit(time.time(), "mis", f"{'study' if level == 'studies' else 'patient'} "
                                      "modified", rid, worklist_updates.describe(u),
                                      {"update": u["id"], "modified": res.get("ID")})
                self.adt_counts["patients_modified"] += 1
            self.outbox.set_meta("adt_applied", u["id"])
            self.adt_counts["applied"] += 1
            orthanc.LogWarning(f"{PREFIX}: {worklist_updates.describe(u)}: {len(found)} stored patient(s) modified")
            done += 1
        return done

    # --- callbacks (never raise, never block) --------------------------------

    @staticmethod
    def _stored(study_id: str) -> bool:
        try:
            orthanc.RestApiGet(f"/studies/{study_id}")
            return True
        except orthanc.OrthancException:
            return False

    def on_worklist(self, answers, query, issuer_aet, called_aet):
        """Orthanc's worklist C-FIND callback: the calling device's scheduled
        items that match the query's keys (Orthanc matches them)."""
        try:
            items = worklist_items.offered(worklist_items.scheduled(self.worklist_db, issuer_aet),
                                           datetime.date.today(), self.worklist_expire_days)
            for item in items:
                if any(self._stored(sid) for sid in worklist_items.study_ids(item)):
                    continue                    # performed: its study is here
                key = json.dumps(item, sort_keys=True)
                ds = self._worklist_cache.get(key)
                if ds is None:
                    ds = worklist_items.dataset(item)
                    self._worklist_cache[key] = ds
                    while len(self._worklist_cache) > 5000:
                        self._worklist_cache.pop(next(iter(self._worklist_cache)))
                if query.WorklistIsMatch(ds):
                    answers.WorklistAddAnswer(query, ds)
        except Exception as exc:  # noqa: BLE001
            orthanc.LogError(f"{PREFIX}: worklist C-FIND from {issuer_aet}: {exc!r}\n{traceback.format_exc()}")
            raise

    def on_received(self, received_dicom, origin):
        """Orthanc's received-instance callback: the ingest stage.  Anything it
        cannot handle goes on as received (Orthanc judges it as always)."""
        keep = (orthanc.ReceivedInstanceAction.KEEP_AS_IS, None)
        try:
            if not self.transfer.enabled:
                return keep
            self.ingest_counts["seen"] += 1
            out = ingest.process(bytes(received_dicom), issuer=self.transfer.issuer,
                                 repair_text=self.transfer.repair_text, patient_key=self.transfer.patient_key)
            if out.error:
                self.ingest_counts["left_as_received"] += 1
                orthanc.LogWarning(f"{PREFIX}: ingest: instance left as received: {out.error[:200]}")
                return keep
            if out.data is None:
                self.ingest_counts["unchanged"] += 1
                return keep
            self.ingest_counts["changed"] += 1
            if out.original and self.outbox is not None:
                # the original bytes of a repaired text, once per study and content (a device
                # writes the same name in every instance; each entry costs an fsync)
                key = (out.study_uid, json.dumps(out.original, sort_keys=True))
                if key not in self._audited:
                    self.outbox.audit(time.time(), "ingest", "text repaired", out.study_uid,
                                      "; ".join(out.changes), {"changes": out.changes, "original": out.original,
                                                               "first_instance": out.sop_uid})
                    self._audited[key] = None
                    while len(self._audited) > 10000:
                        self._audited.pop(next(iter(self._audited)))
            return orthanc.ReceivedInstanceAction.MODIFY, out.data
        except Exception as exc:  # noqa: BLE001
            self.ingest_counts["failed"] += 1
            orthanc.LogError(f"{PREFIX}: ingest callback: {exc!r}")
            return keep

    def on_change(self, change_type, level, resource_id):
        try:
            if change_type == orthanc.ChangeType.NEW_STUDY and self.seen is not None:
                self.seen.new_study(resource_id)
            if self.engine is None:
                return
            if change_type in (orthanc.ChangeType.NEW_INSTANCE, orthanc.ChangeType.STABLE_STUDY):
                self.engine.notify()
            elif change_type == orthanc.ChangeType.DELETED:
                self.engine.notify_deleted(_LEVELS.get(int(level), str(level)), resource_id)
            elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
                self.engine.start()
                self.start_adt()
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                self.stop_adt()
                self.engine.stop()
        except Exception as exc:  # noqa: BLE001
            orthanc.LogError(f"{PREFIX}: change callback ({change_type}, {resource_id}): {exc!r}")

    def on_study(self, output, uri, **request):
        """``GET /kontur/study/ACCESSION|STUDY-UID``: the study's way, with times (issue 12)."""
        try:
            if request.get("method", "GET") != "GET":
                output.SendMethodNotAllowed("GET")
                return
            outbox = self.outbox
            status, body = worklist_status.answer(
                self.worklist_db, outbox.query if outbox is not None else (lambda sql, args=(): []),
                uri.rstrip("/").rsplit("/", 1)[-1],
                expect_validation=bool(self.transfer.enabled and self.transfer.validation is not None))
            _answer(output, status, worklist_status.dumps(body))
        except Exception as exc:  # noqa: BLE001
            _internal_error(output, uri, exc)

    def on_seen(self, output, uri, **request):
        """``GET /kontur/seen``: the last study each device sent here (issue 13)."""
        try:
            if request.get("method", "GET") != "GET":
                output.SendMethodNotAllowed("GET")
                return
            body = self.seen.status() if self.seen is not None else seen_mod.answer(None, None)
            _answer(output, 200, json.dumps(body, sort_keys=True))
        except Exception as exc:  # noqa: BLE001
            _internal_error(output, uri, exc)

    def _shown_study(self, request, login, scope):
        """The study the viewer link names, if ``login`` (kept to hospital ``scope``,
        or None) may open it here: (study, share or None); raises :class:`viewer.NotShown`."""
        groups = request.get("groups") or ("", "", "")
        patient, accession, uid = viewer.parse(*groups[:3])
        found = json.loads(orthanc.RestApiPost("/tools/find", json.dumps(
            {"Level": "Study", "Query": {"StudyInstanceUID": uid}, "Expand": True})))
        study = next((x for x in found if viewer.matches(x, patient, accession)), None)
        if study is None:
            raise viewer.NotShown(404, "there is no such study of that patient on this archive")
        if scope is None:
            return study, None
        first = json.loads(orthanc.RestApiGet(f"/studies/{study['ID']}/instances"))[:1]
        issuer = json.loads(orthanc.RestApiGet(f"/instances/{first[0]['ID']}/simplified-tags")).get(
            "IssuerOfPatientID", "") if first else ""
        share = self.shares.active(scope, uid, time.time()) if self.shares is not None else None
        if not shares_mod.may_view(scope, shares_mod.hospital_of(issuer, self.issuers), share is not None):
            orthanc.LogWarning(f"{PREFIX}: viewer: {login} ({scope}) may not open study {uid}: not of their "
                               "hospital and not shared with it")
            raise viewer.NotShown(403, "this study is not one of your hospital's and is not shared with it; "
                                       "ask the MIAC to share it (kontur study share)")
        return study, share

    def on_view(self, output, uri, **request):
        """``GET /kontur/view/PATIENT/ACCESSION/STUDY-UID``: the page the MIS's link opens (issue 12);
        ``.../images/INSTANCE``: one of its images, by the same rights."""
        try:
            if request.get("method", "GET") != "GET":
                output.SendMethodNotAllowed("GET")
                return
            try:
                login = _caller(request.get("headers"))
                scope = (self.roles.get(login) or {}).get("hospital")
                study, share = self._shown_study(request, login, scope)
                groups = request.get("groups") or ()
                if len(groups) > 3:
                    iid = groups[3]
                    if iid not in {i["ID"] for i in json.loads(orthanc.RestApiGet(f"/studies/{study['ID']}/instances"))}:
                        raise viewer.NotShown(404, "that image is not one of this study's")
                    output.AnswerBuffer(orthanc.RestApiGet(f"/instances/{iid}/preview"), "image/png")
                    return
                if share is not None:
                    self.shares.opened(share, login or "?", time.time())
                series = [json.loads(orthanc.RestApiGet(f"/series/{sid}")) for sid in study.get("Series", [])]
                reports = []
                for s in series:
                    if (s.get("MainDicomTags") or {}).get("Modality") == "SR":
                        for iid in s.get("Instances", []):
                            reports.append(viewer.report_of(json.loads(
                                orthanc.RestApiGet(f"/instances/{iid}/simplified-tags"))))
                if scope is not None:
                    link = ""           # their route is the page; the viewers' REST is not theirs here
                elif self._web_viewer():
                    link = "../../../../web-viewer/app/viewer.html?series={series}"
                else:
                    link = f"../../../../app/explorer.html#study?uuid={study['ID']}"
                text = viewer.page(study, series, viewer.current(reports),
                                   images=quote(study["MainDicomTags"]["StudyInstanceUID"]) + "/images/",
                                   viewer_link=link)
                output.AnswerBuffer(text.encode("utf-8"), "text/html; charset=utf-8")
            except viewer.NotShown as e:
                _answer(output, e.status, viewer.not_shown(e.status, e.text).encode("utf-8"))
        except Exception as exc:  # noqa: BLE001
            _internal_error(output, uri, exc, html=True)

    def _web_viewer(self):
        """Is Orthanc's Web Viewer plugin loaded here (asked once)?"""
        if self._has_web_viewer is None:
            try:
                self._has_web_viewer = "web-viewer" in json.loads(orthanc.RestApiGet("/plugins"))
            except Exception:  # noqa: BLE001
                return False
        return self._has_web_viewer

    def on_shares(self, output, uri, **request):
        """``/kontur/shares`` (GET: the shares and their audit; POST: share a
        study with a hospital) and ``DELETE /kontur/shares/ID`` (revoke), on the
        TsAMI; operators only (roles.lua)."""
        try:
            method = request.get("method", "GET")
            caller = _caller(request.get("headers")) or "?"
            status, body = shares_mod.handle(self.shares, method, uri, request.get("body"), caller,
                                             self.hospitals, self._find_study_uid, time.time())
            if status == 200 and method != "GET":
                orthanc.LogWarning(f"{PREFIX}: shares: {caller} {method} {uri}: "
                                   + json.dumps(body.get("share"), ensure_ascii=False))
            _answer(output, status, json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8"),
                    allow="GET,POST,DELETE")
        except Exception as exc:  # noqa: BLE001
            _internal_error(output, uri, exc)

    def _find_study_uid(self, value):
        """The Study Instance UIDs here of a UID or an accession number."""
        uids = []
        for key in ("StudyInstanceUID", "AccessionNumber"):
            for x in json.loads(orthanc.RestApiPost("/tools/find", json.dumps(
                    {"Level": "Study", "Query": {key: value}, "Expand": True}))):
                uid = (x.get("MainDicomTags") or {}).get("StudyInstanceUID")
                if uid and uid not in uids:
                    uids.append(uid)
            if uids:
                break
        return uids

    def on_rest(self, output, uri, **request):
        try:
            method = request.get("method", "GET")
            caller = _caller(request.get("headers"))
            path = uri.rstrip("/")
            if path in transfer_api.RECEIVER_ROUTES:
                status, ctype, body = transfer_api.handle_receiver(
                    self.receiver.local if self.receiver else None, method, request.get("body"),
                    log_error=orthanc.LogError)
            elif path in api.RECEIVER_ROUTES:
                status, ctype, body = api.handle_receiver(self.receiver, method, path, request.get("body"),
                                                          _receiver_args(request), caller, log_error=orthanc.LogError)
            elif transfer_api.is_route(path):
                if self.engine is None:
                    status, ctype, body = api.error(503, f"replication is disabled on this node: "
                                                         f"{self.disabled_reason}")
                else:
                    status, ctype, body = transfer_api.handle(self.engine, method, path, request.get("body"),
                                                              caller, log_error=orthanc.LogError)
            elif self.engine is None:
                if uri.rstrip("/") == "/kontur/replication" and method == "GET":
                    status, ctype, body = 200, api.JSON, json.dumps(
                        api.disabled_status(self.node, self.disabled_reason or "not configured"),
                        ensure_ascii=False, sort_keys=True).encode()
                else:
                    status, ctype, body = api.error(503, f"replication is disabled on this node: "
                                                         f"{self.disabled_reason}")
            else:
                status, ctype, body = api.handle(self.engine, method, uri, request.get("body"),
                                                 log_error=orthanc.LogError, caller=caller)
            _answer(output, status, body, ctype=ctype,
                    allow=api.ROUTES.get(path) or transfer_api.ROUTES.get(path)
                    or transfer_api.RECEIVER_ROUTES.get(path) or "GET")
        except Exception as exc:  # noqa: BLE001
            _internal_error(output, uri, exc)


PLUGIN = Plugin()
try:
    PLUGIN.setup()
except Exception as _exc:  # noqa: BLE001 - never take Orthanc down with us
    orthanc.LogError(f"{PREFIX}: replication disabled: setup failed: {_exc!r}\n{traceback.format_exc()}")
    PLUGIN.engine = None
    PLUGIN.disabled_reason = f"setup failed: {_exc!r}"
orthanc.RegisterOnChangeCallback(PLUGIN.on_change)
if PLUGIN.worklist_db:
    orthanc.RegisterWorklistCallback(PLUGIN.on_worklist)
if PLUGIN.transfer.enabled:
    orthanc.RegisterReceivedInstanceCallback(PLUGIN.on_received)
orthanc.RegisterRestCallback(api.ROUTE_PATTERN, PLUGIN.on_rest)
orthanc.RegisterRestCallback("/kontur/study/([^/]+)", PLUGIN.on_study)
orthanc.RegisterRestCallback("/kontur/view/([^/]+)/([^/]+)/([^/]+)", PLUGIN.on_view)
orthanc.RegisterRestCallback("/kontur/view/([^/]+)/([^/]+)/([^/]+)/images/([0-9a-f-]+)", PLUGIN.on_view)
orthanc.RegisterRestCallback("/kontur/seen", PLUGIN.on_seen)
orthanc.RegisterRestCallback("/kontur/shares", PLUGIN.on_shares)
orthanc.RegisterRestCallback("/kontur/shares/([0-9]+)", PLUGIN.on_shares)
orthanc.RegisterRestCallback("/kontur/(" + transfer_api.PATTERN + ")", PLUGIN.on_rest)
