# SPDX-License-Identifier: AGPL-3.0-or-later
"""kontur's entry script for Orthanc's Python plugin (the one "PythonScript").

Thin glue, and the only file that imports ``orthanc``: it reads the policy
file named in Orthanc's configuration ("Kontur": {"PolicyFile": ...}), checks
it, builds the pipeline from ``kontur_plugins`` and registers callbacks only
if the check passed; otherwise it logs "disabled" with the reason and serves
only a status route that says so.

Callbacks never raise and never block: the OnChange callback only starts and
stops the worker threads (on ORTHANC_STARTED / ORTHANC_STOPPED) and wakes them
on NewInstance / StableStudy; REST callbacks answer from the outbox.
"""
import json
import os
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import orthanc  # noqa: E402

from kontur_plugins.replication import api  # noqa: E402
from kontur_plugins.replication.config import PolicyError, load_policy, policy_path_from_orthanc  # noqa: E402
from kontur_plugins.replication.engine import Log, Replicator  # noqa: E402
from kontur_plugins.replication.local import LocalArchive, NotFound  # noqa: E402
from kontur_plugins.replication.outbox import Outbox  # noqa: E402

PREFIX = "kontur"
# Orthanc error codes meaning "no such resource"
_NOT_FOUND = {13, 17}


class OrthancRest:
    """This Orthanc's built-in REST API, in-process."""

    @staticmethod
    def _call(fn, *args):
        try:
            return fn(*args)
        except orthanc.OrthancException as exc:
            if exc.args and exc.args[0] in _NOT_FOUND:
                raise NotFound(args[0]) from None
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


class Plugin:
    def __init__(self):
        self.engine = None
        self.disabled_reason = None
        self.node = None

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
        if not cfg.enabled:
            self.disabled_reason = cfg.reason
            orthanc.LogWarning(f"{PREFIX}: replication disabled on {cfg.node}: {cfg.reason}")
            return
        try:
            outbox = Outbox(cfg.state_db)
        except Exception as exc:  # noqa: BLE001
            self.disabled_reason = f"cannot open the outbox {cfg.state_db}: {exc}"
            orthanc.LogError(f"{PREFIX}: replication disabled: {self.disabled_reason}")
            return
        try:
            stable_age = float(config.get("StableAge", 60))
            self.engine = Replicator(
                cfg, LocalArchive(OrthancRest()), outbox, stable_age=stable_age,
                log=Log(orthanc.LogInfo, orthanc.LogWarning, orthanc.LogError))
        except Exception as exc:  # noqa: BLE001 - e.g. unreadable client certificate
            self.disabled_reason = f"cannot start: {exc}"
            orthanc.LogError(f"{PREFIX}: replication disabled: {self.disabled_reason}\n{traceback.format_exc()}")
            self.engine = None
            return
        orthanc.RegisterOnChangeCallback(self.on_change)
        orthanc.LogWarning(f"{PREFIX}: replication enabled on {cfg.node}: {self.engine.describe()}")

    # --- callbacks (never raise, never block) --------------------------------

    def on_change(self, change_type, level, resource_id):
        try:
            if change_type in (orthanc.ChangeType.NEW_INSTANCE, orthanc.ChangeType.STABLE_STUDY):
                self.engine.notify()
            elif change_type == orthanc.ChangeType.ORTHANC_STARTED:
                self.engine.start()
            elif change_type == orthanc.ChangeType.ORTHANC_STOPPED:
                self.engine.stop()
        except Exception as exc:  # noqa: BLE001
            orthanc.LogError(f"{PREFIX}: change callback ({change_type}, {resource_id}): {exc!r}")

    def on_rest(self, output, uri, **request):
        try:
            method = request.get("method", "GET")
            if self.engine is None:
                if uri.rstrip("/") == "/kontur/replication" and method == "GET":
                    status, ctype, body = 200, api.JSON, json.dumps(
                        api.disabled_status(self.node, self.disabled_reason or "not configured"),
                        ensure_ascii=False, sort_keys=True).encode()
                else:
                    status, ctype, body = api.error(503, f"replication is disabled on this node: "
                                                         f"{self.disabled_reason}")
            else:
                status, ctype, body = api.handle(self.engine, method, uri, request.get("body"),
                                                 log_error=orthanc.LogError)
            if status == 200:
                output.AnswerBuffer(body, ctype)
            elif status == 405:
                output.SendMethodNotAllowed(api.ROUTES.get(uri.rstrip("/"), "GET"))
            else:
                # Python plugin 4.0: the body goes as text (its UTF-8 length in bytes)
                output.SendHttpStatus(status, body.decode("utf-8"), len(body))
        except Exception as exc:  # noqa: BLE001
            orthanc.LogError(f"{PREFIX}: REST {uri}: {exc!r}\n{traceback.format_exc()}")
            try:
                msg = '{"error": "internal error; see the Orthanc log"}'
                output.SendHttpStatus(500, msg, len(msg))
            except Exception:  # noqa: BLE001
                pass


PLUGIN = Plugin()
try:
    PLUGIN.setup()
except Exception as _exc:  # noqa: BLE001 - never take Orthanc down with us
    orthanc.LogError(f"{PREFIX}: replication disabled: setup failed: {_exc!r}\n{traceback.format_exc()}")
    PLUGIN.engine = None
    PLUGIN.disabled_reason = f"setup failed: {_exc!r}"
orthanc.RegisterRestCallback("/kontur/(replication|replication/metrics|replication/parked|replicate|flag)",
                             PLUGIN.on_rest)
