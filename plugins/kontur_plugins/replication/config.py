# SPDX-License-Identifier: AGPL-3.0-or-later
"""The policy file (``/etc/kontur/policy.json``) kontur renders per node.

Schema 1::

    {
      "schema": 1,
      "node": "onco-lami", "role": "lami", "hospital": "onco",
      "timezone": "Asia/Novokuznetsk",
      "state_dir": "/var/lib/kontur",
      "replication": {
        "enabled": true,
        "mode": "all" | "pathology" | "on-demand",
        "gateway": false,
        "windows": ["20:00-07:00"],
        "bandwidth_mbit": 50 | null,
        "deadline_hours": 24,
        "retention_days": null | 7,
        "upstream": {"name", "aet", "url", "username", "password",
                     "ca_file", "cert_file", "key_file"},
        "tuning": {... see TUNING_DEFAULTS ...}
      }
    }

A node without replication (the TsAMI, the research sandbox) has
``"replication": {"enabled": false, "reason": "..."}``.
"""
from __future__ import annotations

import json
import os
import re
import zoneinfo
from dataclasses import dataclass, field
from typing import Any

from ..problems import ConfigProblems

SCHEMA = 1
MODES = ("all", "pathology", "on-demand")
DEFAULT_POLICY_FILE = "/etc/kontur/policy.json"

#: every tuning knob with its default; the policy file may override any of them
TUNING_DEFAULTS: dict[str, float | int] = {
    # retries: like dcm4chee's defaults (30 s, doubling, capped), but never giving up
    "retry_base_seconds": 30.0,
    "retry_factor": 2.0,
    "retry_max_seconds": 600.0,
    # while the link is backed off, one cheap GET /system this often: when it
    # answers, sending resumes at once instead of waiting out the backoff
    "link_probe_seconds": 30.0,
    # incremental reconciliation from Orthanc's /changes
    "changes_poll_seconds": 5.0,
    # while instances arrive, /changes is read at most this often: one
    # transaction (one fsync) per batch of instances instead of one per instance
    "changes_coalesce_seconds": 0.5,
    "changes_batch": 500,
    # a study touched by new instances is treated as stable after StableAge + this
    # many quiet seconds even if Orthanc's StableStudy event was lost (restart)
    "stable_grace_seconds": 30.0,
    # a study whose device reported its procedure step COMPLETED (MPPS, through
    # the HL7 service) is ready after this many quiet seconds instead of StableAge
    "mpps_settle_seconds": 5.0,
    # the studies' events (archived, delivered: told to the HL7 service) are kept this long
    "events_keep_seconds": 90 * 86400.0,
    # periodic full pass comparing per-study instance counts with the upstream
    "full_pass_interval_seconds": 86400.0,
    "full_pass_first_delay_seconds": 900.0,
    "full_pass_page": 100,
    "full_pass_pause_seconds": 0.2,
    # sender
    "http_timeout_seconds": 60.0,
    "chunk_bytes": 65536,
    "pacing_fraction": 0.95,
    "verify_rounds": 3,
    "idle_poll_seconds": 5.0,
}

_WINDOW_RE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class PolicyError(ConfigProblems):
    """The policy file cannot be used; ``problems`` lists why."""


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str
    username: str | None
    password: str | None
    aet: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def tls(self) -> bool:
        return self.url.startswith("https://")

    def public(self) -> dict[str, Any]:
        """What status pages may show (no password)."""
        return {"name": self.name, "url": self.url, "aet": self.aet, "tls": self.tls,
                "client_certificate": bool(self.cert_file)}


@dataclass(frozen=True)
class ReplicationConfig:
    node: str
    role: str
    hospital: str | None
    timezone: str
    state_dir: str
    enabled: bool
    reason: str | None = None
    mode: str = "all"
    gateway: bool = False
    windows: tuple[str, ...] = ()
    bandwidth_mbit: float | None = None
    deadline_hours: int = 24
    retention_days: float | None = None
    upstream: Upstream | None = None
    tuning: dict[str, float] = field(default_factory=lambda: dict(TUNING_DEFAULTS))

    def t(self, key: str) -> float:
        return self.tuning[key]

    @property
    def cap_bytes_per_second(self) -> float | None:
        if not self.bandwidth_mbit:
            return None
        return self.bandwidth_mbit * 1_000_000 / 8

    @property
    def state_db(self) -> str:
        return os.path.join(self.state_dir, "replication.sqlite3")


def check_window(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"{value!r} is not a window; expected text HH:MM-HH:MM"
    m = _WINDOW_RE.match(value)
    if not m:
        return f"{value!r} is not a window; expected HH:MM-HH:MM such as 20:00-07:00"
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        return f"{value!r} has a time outside 00:00-23:59"
    if (h1, m1) == (h2, m2):
        return f"{value!r} starts and ends at the same time"
    return None


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_policy(data: Any) -> ReplicationConfig:
    """Validate a parsed policy document; raise :class:`PolicyError` with every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise PolicyError(["the policy is not a JSON object"])
    if data.get("schema") != SCHEMA:
        problems.append(f"schema is {data.get('schema')!r}; this plugin reads schema {SCHEMA}")
    node = data.get("node")
    if not isinstance(node, str) or not node:
        problems.append("node: missing; expected the node's name")
    role = data.get("role")
    if not isinstance(role, str) or not role:
        problems.append("role: missing; expected lami, gateway, tsami, ...")
    tz = data.get("timezone")
    try:
        zoneinfo.ZoneInfo(tz) if isinstance(tz, str) else None
        if not isinstance(tz, str):
            problems.append("timezone: missing; expected an IANA name such as Asia/Novokuznetsk")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problems.append(f"timezone: {tz!r} is not a time zone known to this host (tzdata)")
    state_dir = data.get("state_dir")
    if not isinstance(state_dir, str) or not state_dir.startswith("/"):
        problems.append(f"state_dir: {state_dir!r} is not an absolute path")
    rep = data.get("replication")
    if not isinstance(rep, dict):
        problems.append("replication: missing; expected an object")
        raise PolicyError(problems)
    base = dict(node=node or "?", role=role or "?", hospital=data.get("hospital"),
                timezone=tz if isinstance(tz, str) else "UTC", state_dir=state_dir or "/")
    if rep.get("enabled") is False:
        if problems:
            raise PolicyError(problems)
        return ReplicationConfig(enabled=False, reason=str(rep.get("reason") or "disabled in the policy"), **base)
    if rep.get("enabled") is not True:
        problems.append("replication.enabled: expected true or false")
    mode = rep.get("mode")
    if mode not in MODES:
        problems.append(f"replication.mode: {mode!r}; expected one of {', '.join(MODES)}")
    gateway = rep.get("gateway", False)
    if not isinstance(gateway, bool):
        problems.append("replication.gateway: expected true or false")
    windows = rep.get("windows", [])
    if not isinstance(windows, list):
        problems.append("replication.windows: expected a list of HH:MM-HH:MM")
        windows = []
    for w in windows:
        msg = check_window(w)
        if msg:
            problems.append(f"replication.windows: {msg}")
    bw = rep.get("bandwidth_mbit")
    if bw is not None and (not _num(bw) or bw <= 0):
        problems.append(f"replication.bandwidth_mbit: {bw!r}; expected a positive number or null")
    deadline = rep.get("deadline_hours", 24)
    if not _num(deadline) or deadline <= 0:
        problems.append(f"replication.deadline_hours: {deadline!r}; expected a positive number")
    retention = rep.get("retention_days")
    if retention is not None and (not _num(retention) or retention < 0):
        problems.append(f"replication.retention_days: {retention!r}; expected a number >= 0 or null")
    if gateway is True and retention is None:
        problems.append("replication.retention_days: a gateway needs a retention (0 = delete right after verified delivery)")
    up = rep.get("upstream")
    upstream = None
    if not isinstance(up, dict):
        problems.append("replication.upstream: missing; expected {name, url, username, password, ...}")
    else:
        url = up.get("url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/]+/", url):
            problems.append(f"replication.upstream.url: {url!r}; expected http(s)://host:port/ with a trailing slash")
        for key in ("ca_file", "cert_file", "key_file"):
            v = up.get(key)
            if v is not None and not isinstance(v, str):
                problems.append(f"replication.upstream.{key}: expected a path or null")
        if (up.get("cert_file") is None) != (up.get("key_file") is None):
            problems.append("replication.upstream: cert_file and key_file go together")
        if isinstance(url, str) and url.startswith("http://") and up.get("cert_file"):
            problems.append("replication.upstream: a client certificate needs an https:// url")
        if isinstance(url, str) and url.startswith("https://") and not up.get("ca_file"):
            problems.append("replication.upstream.ca_file: an https:// upstream needs the regional CA's certificate; "
                            "kontur never falls back to the system's certificate authorities")
        if not isinstance(up.get("name"), str):
            problems.append("replication.upstream.name: missing")
        upstream = Upstream(name=str(up.get("name")), url=str(url), username=up.get("username"),
                            password=up.get("password"), aet=up.get("aet"), ca_file=up.get("ca_file"),
                            cert_file=up.get("cert_file"), key_file=up.get("key_file"))
    tuning = dict(TUNING_DEFAULTS)
    given = rep.get("tuning", {}) or {}
    if not isinstance(given, dict):
        problems.append("replication.tuning: expected an object")
        given = {}
    for key, value in given.items():
        if key not in TUNING_DEFAULTS:
            problems.append(f"replication.tuning.{key}: unknown knob; known: {', '.join(sorted(TUNING_DEFAULTS))}")
        elif not _num(value) or value < 0:
            problems.append(f"replication.tuning.{key}: {value!r}; expected a number >= 0")
        else:
            tuning[key] = value
    if not 0 < tuning["pacing_fraction"] <= 1:
        problems.append("replication.tuning.pacing_fraction: expected a number in (0, 1]")
    if tuning["link_probe_seconds"] <= 0:
        problems.append("replication.tuning.link_probe_seconds: expected a number of seconds > 0")
    if tuning["retry_factor"] < 1:
        problems.append("replication.tuning.retry_factor: expected >= 1")
    if tuning["chunk_bytes"] < 1024:
        problems.append("replication.tuning.chunk_bytes: expected >= 1024")
    if tuning["full_pass_page"] < 1 or tuning["changes_batch"] < 1:
        problems.append("replication.tuning: full_pass_page and changes_batch must be >= 1")
    if problems:
        raise PolicyError(problems)
    return ReplicationConfig(
        enabled=True, mode=mode, gateway=gateway, windows=tuple(windows),
        bandwidth_mbit=float(bw) if bw is not None else None, deadline_hours=deadline,
        retention_days=retention, upstream=upstream, tuning=tuning, **base)


def load_policy(path: str) -> ReplicationConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise PolicyError([f"{path}: not found; kontur renders it (kontur deploy)"]) from None
    except PermissionError:
        raise PolicyError([f"{path}: permission denied; expected mode 0600 owned by the orthanc user"]) from None
    except (OSError, ValueError) as exc:
        raise PolicyError([f"{path}: cannot be read as JSON ({exc})"]) from None
    return parse_policy(data)


def policy_path_from_orthanc(config: Any) -> str:
    """The policy file named in Orthanc's configuration ("Kontur": {"PolicyFile"}),
    else the default."""
    if isinstance(config, dict):
        section = config.get("Kontur")
        if isinstance(section, dict) and isinstance(section.get("PolicyFile"), str):
            return section["PolicyFile"]
    return DEFAULT_POLICY_FILE
