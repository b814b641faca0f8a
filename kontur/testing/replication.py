"""Helpers for replication tests with real Orthanc processes (loopback).

``Node`` wraps a LAMI/gateway :class:`~kontur.testing.orthanc.OrthancProcess`
that loads kontur's entry script with a policy file; ``make_policy`` builds
such a file the way the renderer does; ``node_config`` is the Orthanc
configuration a node needs for the plugin (the keys the renderer emits).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .dicom import Study, send_study
from .orthanc import DICOMWEB_PLUGIN, PYTHON_PLUGIN, HttpError, OrthancProcess, wait_for

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "plugins" / "kontur_entry.py"
PEER_USER, PEER_PASSWORD = "peer-lami", "peer-secret"
SCU_AET = "TESTSCU"
TZ = "Asia/Novokuznetsk"

REFUSE_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == 'REFUSED' then
    return false
  end
  return true
end
"""

#: fast timings for tests; production keeps the plugin's defaults
FAST = {
    "changes_poll_seconds": 1,
    "stable_grace_seconds": 2,
    "retry_base_seconds": 0.5,
    "retry_factor": 2,
    "retry_max_seconds": 2,
    "full_pass_first_delay_seconds": 3600,
    "full_pass_interval_seconds": 3600,
    "full_pass_pause_seconds": 0,
    "idle_poll_seconds": 1,
    "http_timeout_seconds": 10,
}


def node_config(policy_path: str | Path, *, stable_age: int = 2) -> dict:
    """Orthanc configuration keys for a node running kontur's plugin."""
    return {
        "Plugins": [DICOMWEB_PLUGIN, PYTHON_PLUGIN],
        "PythonScript": str(ENTRY),
        "PythonVerbose": False,
        "Kontur": {"PolicyFile": str(policy_path)},
        "StableAge": stable_age,
        "DicomModalities": {"test-scu": {"AET": SCU_AET, "Host": "127.0.0.1", "Port": 11112,
                                         "AllowStore": True, "AllowEcho": True}},
        "DicomAlwaysAllowStore": False,
    }


def tsami_config(lua_path: str | Path, state_dir: str | Path | None = None) -> dict:
    """A receiving TsAMI: DICOMweb, a peer account, the refusing filter, and --
    with ``state_dir`` -- kontur's plugin as every node runs it (replication
    disabled, the receiver routes served)."""
    cfg = {
        "Plugins": [DICOMWEB_PLUGIN],
        "RegisteredUsers": {PEER_USER: PEER_PASSWORD},
        "LuaScripts": [str(lua_path)],
    }
    if state_dir is not None:
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        policy = state / "policy.json"
        policy.write_text(json.dumps({"schema": 1, "node": "tsami", "role": "tsami", "hospital": None,
                                      "timezone": TZ, "state_dir": str(state),
                                      "replication": {"enabled": False,
                                                      "reason": "a tsami node does not replicate to an upstream"}}))
        cfg["Plugins"].append(PYTHON_PLUGIN)
        cfg.update({"PythonScript": str(ENTRY), "PythonVerbose": False, "Kontur": {"PolicyFile": str(policy)}})
    return cfg


class Node:
    """A LAMI or gateway Orthanc with the plugin, and its policy file."""

    def __init__(self, orthanc: OrthancProcess, policy_path: Path, files: Path):
        self.orthanc = orthanc
        self.policy_path = policy_path
        self.files = files

    def __getattr__(self, name):
        return getattr(self.orthanc, name)

    @property
    def policy(self) -> dict:
        return json.loads(self.policy_path.read_text())

    def write_policy(self, policy: dict) -> None:
        self.policy_path.write_text(json.dumps(policy, indent=2, sort_keys=True))

    def status(self) -> dict:
        return self.orthanc.get("/kontur/replication")

    def wait_following(self, timeout: float = 60) -> dict:
        """Until the plugin follows Orthanc's change log (its first start has
        read where /changes ends) or says replication is disabled here: a
        study stored before that is the full pass's, not the feed's, and a
        test that stores at once would race the plugin's start."""
        def ready():
            st = self.status()
            return st if st.get("enabled") is False or st.get("changes_seq") is not None else None
        return wait_for(ready, timeout, message=f"the plugin on {self.orthanc.name} to follow /changes")

    def store(self, study: Study, instances=None) -> None:
        """C-STORE from the test modality, as a device would."""
        send_study(study, self.files, port=self.orthanc.dicom_port, called_aet=self.orthanc.aet,
                   calling_aet=SCU_AET, instances=instances)

    def wait_processed(self, study: Study, timeout: float = 60) -> dict:
        """Until the plugin has seen the study become stable (its outbox row is
        no longer waiting for stability)."""
        def done():
            st = self.status()
            last = self.orthanc.get("/changes?last")["Last"]
            return st if st["changes_seq"] >= last and st["awaiting_stable"] == 0 else None
        sid = study.orthanc_id()
        wait_for(lambda: any(c["ChangeType"] == "StableStudy" and c["ID"] == sid
                             for c in self.orthanc.get("/changes?limit=1000")["Changes"]),
                 timeout, message=f"StableStudy of {sid}")
        return wait_for(done, timeout, message="the plugin to process every change")

    def replicate(self, **body) -> dict:
        return self.orthanc.post("/kontur/replicate", body)


def new_node(base: Path, name: str, upstream_url: str, processes: list, *, stable_age: int = 2, start: bool = True,
             extra_config: dict | None = None, policy_node: str | None = None, **policy_kw) -> Node:
    """A LAMI or gateway Orthanc with kontur's plugin under ``base``, replicating
    to ``upstream_url``; appended to ``processes`` (stopped by the caller's teardown).
    ``policy_node``: the node name in its policy (default "lami" or "gateway")."""
    base.mkdir(parents=True)
    policy_path = base / "policy.json"
    policy = make_policy(upstream_url, base / "state", **policy_kw)
    if policy_node:
        policy["node"] = policy_node
    policy_path.write_text(json.dumps(policy, indent=2, sort_keys=True))
    cfg = node_config(policy_path, stable_age=stable_age)
    cfg.update(extra_config or {})
    o = OrthancProcess(name, cfg, base / "orthanc", aet=name.upper().replace("-", "_")[:16])
    processes.append(o)
    node = Node(o, policy_path, base / "files")
    if start:
        o.start()
        node.wait_following()
    return node


def make_policy(upstream_url: str, state_dir: Path, *, mode: str = "all", gateway: bool = False,
                windows=(), bandwidth_mbit=None, retention_days=None, tuning=None, tls=None,
                transfer: dict | None = None, worklist: dict | None = None) -> dict:
    """A policy like the renderer's (``transfer``: the ingest stage's section, off by default;
    ``worklist``: where the HL7 service keeps its items, none by default)."""
    up = {"name": "tsami", "aet": "TSAMI", "url": upstream_url, "username": PEER_USER,
          "password": PEER_PASSWORD, "ca_file": None, "cert_file": None, "key_file": None}
    up.update(tls or {})
    extra = {"worklist": worklist} if worklist else {}
    return {
        **extra,
        "schema": 1, "node": "gateway" if gateway else "lami", "role": "gateway" if gateway else "lami",
        "hospital": "test", "timezone": TZ, "state_dir": str(state_dir),
        "transfer": transfer or {"enabled": False, "reason": "off in this test"},
        "replication": {
            "enabled": True, "mode": mode, "gateway": gateway, "windows": list(windows),
            "bandwidth_mbit": bandwidth_mbit, "deadline_hours": 24,
            "retention_days": retention_days if gateway else None,
            "upstream": up, "tuning": {**FAST, **(tuning or {})},
        },
    }


def delivered(tsami: OrthancProcess, study: Study) -> bool:
    return tsami.sop_uids_of_study(study.orthanc_id()) == study.sop_uids


def wait_delivered(tsami: OrthancProcess, study: Study, timeout: float = 90) -> None:
    wait_for(lambda: delivered(tsami, study), timeout, message=f"study {study.orthanc_id()} at the TsAMI")


def http_status(fn, *args, **kw) -> tuple[int, object]:
    try:
        return 200, fn(*args, **kw)
    except HttpError as exc:
        try:
            body = json.loads(exc.body)
        except ValueError:
            body = exc.body
        return exc.status, body


def node_clients(monkeypatch, nodes: dict[str, "Node"]) -> None:
    """Point the CLI's node clients (``kontur.nodeapi.client_for``) at test
    Orthancs: ``nodes`` by inventory node name; every other node answers as a
    node that is down (a closed port)."""
    from .. import nodeapi
    from .orthanc import free_port
    dead = f"http://127.0.0.1:{free_port()}/"

    def client_for(region_, node, *, lab=False):
        if node in nodes:
            o = nodes[node]
            return nodeapi.NodeClient(o.url, o.username, o.password, name=node)
        return nodeapi.NodeClient(dead, "kontur", "x", name=node, timeout=2)

    monkeypatch.setattr(nodeapi, "client_for", client_for)
