# SPDX-License-Identifier: AGPL-3.0-or-later
"""The on-call view of a region (issue 13, R7, R15): what each node's probe
answered, judged green / yellow / red against the inventory, with whom to
call next to every red row.  Pure: no SSH, no sockets -- ``kontur.check``
gathers the answers (``kontur/scripts/health_probe.py`` on each node) and
prints what this module decides.

Levels: red needs someone now (a service down, the node unreachable, a
study past its deadline, a disk over its critical threshold, a certificate
within two weeks of expiry, default credentials accepted, a device missing
from the node's configuration); yellow needs a look during the day (a disk
over its warning threshold, a certificate within a month, parked or
quarantined studies, a device silent for longer than its rhythm).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .model import Person, Region, Role

GREEN, YELLOW, RED = "green", "yellow", "red"
_RANK = {GREEN: 0, YELLOW: 1, RED: 2}
#: a certificate this many days from expiry is red / yellow
CERT_RED_DAYS, CERT_YELLOW_DAYS = 14, 30
#: the regional CA's revocation list on a node (kontur.render.CRL_FILE), watched as the certificates are
CRL_SUFFIX = "/crl.pem"
#: the HL7 service's AE title as the renderer declares it on a node (kontur.render.orthanc)
HL7_AET = "KONTUR_HL7"


def worst(levels) -> str:
    return max(levels, key=_RANK.__getitem__, default=GREEN)


@dataclass
class Finding:
    level: str
    subject: str          # "node", a unit, "→ tsami", a device's AE title, a file
    message: str


@dataclass
class NodeHealth:
    node: str
    role: str
    hospitals: list[str]
    responsible: list[Person]
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    probe: dict[str, Any] | None = None

    @property
    def level(self) -> str:
        return worst(f.level for f in self.findings)

    def add(self, level: str, subject: str, message: str) -> None:
        self.findings.append(Finding(level, subject, message))


# --- what to ask ---------------------------------------------------------------

def probe_params(region: Region, node: str, bundle) -> dict[str, Any]:
    """The probe's parameters for ``node`` (from its rendered bundle: its units, its certificates)."""
    spec = region.nodes[node]
    ports = region.ports(node)
    archive = spec.role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH)
    params: dict[str, Any] = {
        "units": list(bundle.services), "archive": archive,
        # the certificates and the revocation list (nginx refuses every client certificate once it lapses)
        "certificates": sorted(f.path for f in bundle.files if f.path.endswith((".crt", CRL_SUFFIX))),
        "disk": {}}
    if archive:
        dicom = json.loads(bundle.file("/etc/orthanc/dicom.json").content)
        local_hl7 = any(m.get("AET") == HL7_AET and m.get("Host") == "127.0.0.1"
                        for m in dicom.get("DicomModalities", {}).values())
        params.update(http=ports.http, https=ports.https, dicom=ports.dicom, aet=spec.aet,
                      echo_aet=HL7_AET if local_hl7 else None,
                      # the devices: kontur's own services on loopback call Orthanc, they are no SCP of it
                      echo_peers=sorted(k for k, m in dicom.get("DicomModalities", {}).items()
                                        if m.get("Host") != "127.0.0.1"),
                      disk={"storage": spec.storage_dir,
                            "index": "/var/lib/postgresql" if region.index_of(node) == "postgresql" else None})
    return params


def expected_modalities(bundle) -> list[str]:
    return sorted(json.loads(bundle.file("/etc/orthanc/dicom.json").content).get("DicomModalities", {}))


def responsible(region: Region, node: str) -> tuple[list[str], list[Person]]:
    """The hospitals a node serves and their responsible staff; the centre's for the TsAMI and research."""
    hospitals = [k for k, h in region.hospitals.items() if h.node == node]
    people = [p for k in hospitals for p in region.hospitals[k].staff]
    if not people:
        people = list(region.centre.staff)
    return hospitals, people


def silence_limit_hours(studies_per_day: int) -> float | None:
    """How long a device may be silent before it is a warning: five of its usual
    intervals, at least 12 hours (nights and weekends are quiet), at most three
    days; a device without a rhythm (``studies_per_day: 0``) is never warned about."""
    if studies_per_day <= 0:
        return None
    return min(72.0, max(12.0, 5 * 24.0 / studies_per_day))


# --- judging -------------------------------------------------------------------

def judge(region: Region, node: str, bundle, probe: dict[str, Any] | None, *, ssh_error: str | None = None,
          https_error: str | None = None, seconds: float = 0.0) -> NodeHealth:
    spec = region.nodes[node]
    hospitals, people = responsible(region, node)
    h = NodeHealth(node, spec.role.value, hospitals, people, seconds=round(seconds, 2), probe=probe)
    if ssh_error is not None or probe is None:
        h.add(RED, "node", f"unreachable over SSH: {ssh_error or 'no answer'}")
        if https_error:
            h.add(RED, "https", f"HTTPS from the control machine: {https_error}")
        return h
    now = float(probe.get("now") or 0)
    _units(h, probe.get("units"))
    if https_error:
        h.add(RED, "https", f"HTTPS from the control machine: {https_error}")
    _disks(h, region.disk(node), probe.get("disk"))
    _certificates(h, probe.get("certificates"), now)
    if spec.role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH):
        _archive(h, region, node, bundle, probe, now)
    return h


def _error(part: Any) -> str | None:
    return part.get("error") if isinstance(part, dict) and isinstance(part.get("error"), str) else None


def _units(h: NodeHealth, units: Any) -> None:
    if _error(units):
        h.add(RED, "systemd", f"cannot ask systemd: {_error(units)}")
        return
    for unit, state in (units or {}).items():
        if state != "active":
            h.add(RED, unit, f"{unit} is {state}")


def _disks(h: NodeHealth, disk, answer: Any) -> None:
    if _error(answer):
        h.add(YELLOW, "disk", f"cannot read disk usage: {_error(answer)}")
        return
    for label, d in (answer or {}).items():
        used = float(d["used_percent"])
        what = f"{label} ({d['path']}) is {used:.0f}% full"
        if used >= disk.critical_percent:
            h.add(RED, f"disk {label}", f"{what}: over the critical threshold {disk.critical_percent}%")
        elif used >= disk.warning_percent:
            h.add(YELLOW, f"disk {label}", f"{what}: over the warning threshold {disk.warning_percent}%")


def days_left(not_after: float, now: float) -> int:
    return math.floor((not_after - now) / 86400)


def _certificates(h: NodeHealth, answer: Any, now: float) -> None:
    if _error(answer):
        h.add(YELLOW, "certificates", f"cannot read the certificates: {_error(answer)}")
        return
    for path, c in (answer or {}).items():
        crl = path.endswith(CRL_SUFFIX)
        what = "revocation list" if crl else "certificate"
        after = ("; nginx refuses every client certificate after that, and the next `kontur deploy` "
                 "signs a new list") if crl else ""
        if "error" in c:
            h.add(RED, path, f"{what} {path}: {c['error']}")
            continue
        left = days_left(c["not_after"], now)
        if left < 0:
            h.add(RED, path, f"{what} {path} expired {-left} day(s) ago{after}")
        elif left <= CERT_RED_DAYS:
            h.add(RED, path, f"{what} {path} expires in {left} day(s){after}")
        elif left <= CERT_YELLOW_DAYS:
            h.add(YELLOW, path, f"{what} {path} expires in {left} day(s){after}")


def _archive(h: NodeHealth, region: Region, node: str, bundle, probe: dict, now: float) -> None:
    o = probe.get("orthanc") or {}
    if _error(o):
        h.add(RED, "orthanc", f"cannot ask Orthanc: {_error(o)}")
        return
    rest = o.get("rest") or {}
    if rest.get("status") != 200:
        h.add(RED, "orthanc", f"REST with the service account answered {rest.get('status') or 'nothing'}")
    for key, label in (("default_credentials", "orthanc:orthanc"), ("no_credentials", "no credentials")):
        if o.get(key) not in (401, None):
            h.add(RED, "security", f"REST authenticates {label} (HTTP {o.get(key)}; expected 401)")
    echo = probe.get("echo") or {}
    if not echo.get("answered", False) or (echo.get("ok") is False and not _error(echo)):
        h.add(RED, "dicom", f"C-ECHO to {region.nodes[node].aet} on port {region.ports(node).dicom} failed: "
                            f"{_error(echo) or echo.get('detail') or 'no answer'}")
    tls = probe.get("tls_without_certificate") or {}
    if _error(tls):
        h.add(RED, "tls", f"HTTPS on port {region.ports(node).https} does not answer: {_error(tls)}")
    elif tls.get("status") != 400:
        h.add(RED, "tls", f"HTTPS without a client certificate answered {tls.get('status')}; "
                          "expected 400 (mutual TLS is off)")
    if rest.get("status") != 200:
        return
    _modalities(h, region, node, bundle, o, now)
    _replication(h, region, node, o.get("replication"))


def _modalities(h: NodeHealth, region: Region, node: str, bundle, o: dict, now: float) -> None:
    configured = o.get("modalities")
    if _error(configured):
        h.add(RED, "modalities", f"cannot list Orthanc's modalities: {_error(configured)}")
        return
    expected = expected_modalities(bundle)
    for key in sorted(set(expected) - set(configured or [])):
        h.add(RED, key, f"{key} is in the inventory but missing from Orthanc's configuration (hand edit?)")
    for key in sorted(set(configured or []) - set(expected)):
        h.add(YELLOW, key, f"{key} is in Orthanc's configuration but not in the inventory")
    echo = o.get("echo_peers") or {}
    seen = o.get("seen") or {}
    devices = seen.get("devices") or {}
    since = float(seen.get("since") or now)
    for _hospital, m in region.dicom_senders(node):
        limit = silence_limit_hours(m.studies_per_day)
        if limit is None:
            continue
        last = devices.get(m.aet, {}).get("at")
        quiet = (now - float(last if last is not None else since)) / 3600
        if quiet > limit:
            when = f"last study {quiet:.0f} h ago" if last is not None else f"no study in the {quiet:.0f} h since recording began"
            answers = echo.get(m.key)
            h.add(YELLOW, m.aet, f"{m.aet} ({m.modality}, ~{m.studies_per_day}/day) silent: {when}; "
                                 f"its usual rhythm allows {limit:.0f} h"
                                 + ("" if answers is None else ("; answers C-ECHO" if answers else
                                                                "; does not answer C-ECHO")))


def _replication(h: NodeHealth, region: Region, node: str, rep: Any) -> None:
    spec = region.nodes[node]
    if spec.upstream is None:
        return
    link = f"→ {spec.upstream}"
    if _error(rep):
        h.add(RED, link, f"replication status: {_error(rep)}")
        return
    if not rep.get("enabled"):
        h.add(RED, link, f"replication is disabled: {rep.get('reason') or rep.get('disabled_reason') or 'unknown'}")
        return
    up = rep.get("link") or {}
    if up.get("up") is False:
        h.add(RED, link, f"the link to {spec.upstream} is down ({up.get('failures')} failures): "
                         f"{str(up.get('last_error') or '')[:160]}")
    deadline = float(rep.get("deadline_hours") or 24)
    if rep.get("overdue"):
        h.add(RED, link, f"{rep['overdue']} stud{'y' if rep['overdue'] == 1 else 'ies'} undelivered past the "
                         f"{deadline:.0f} h deadline (oldest waiting {float(rep.get('oldest_pending_age_seconds') or 0) / 3600:.1f} h)")
    elif (rep.get("oldest_pending_age_seconds") or 0) > deadline * 3600 / 2:
        h.add(YELLOW, link, f"the oldest study has waited {rep['oldest_pending_age_seconds'] / 3600:.1f} h "
                            f"of its {deadline:.0f} h deadline ({rep.get('queue_depth')} queued)")
    for alarm in rep.get("alarms") or []:
        h.add(RED, link, str(alarm))
    if rep.get("parked"):
        h.add(YELLOW, link, f"{rep['parked']} stud{'y' if rep['parked'] == 1 else 'ies'} parked "
                            "(kontur replication problems)")
    transfer = rep.get("transfer") if isinstance(rep.get("transfer"), dict) else {}
    # under "warn" a study that fails the package is sent anyway: only "enforce" holds one back
    quarantined = (int(transfer.get("quarantined") or 0) - int(transfer.get("released") or 0)
                   if transfer.get("mode") == "enforce" else 0)
    if quarantined > 0:
        h.add(YELLOW, link, f"{quarantined} stud{'y' if quarantined == 1 else 'ies'} in quarantine "
                            "(kontur quarantine list)")


# --- output --------------------------------------------------------------------

def exit_code(results: list[NodeHealth], strict: bool = False) -> int:
    level = worst(r.level for r in results)
    return 1 if level == RED or (strict and level == YELLOW) else 0


def call_whom(people: list[Person]) -> str:
    return "; ".join(f"{p.name} ({p.position}) {p.work_phone}, {p.mobile_phone}" for p in people) or \
        "nobody recorded (inventory: staff)"


def rows(results: list[NodeHealth]) -> list[dict[str, str]]:
    """The table: a row per node, then a row per finding; the responsible staff on every red row."""
    out = []
    for r in results:
        problems = [f for f in r.findings if f.level != GREEN]
        summary = "ok" if not problems else f"{len(problems)} problem(s)"
        out.append({"level": r.level, "node": r.node, "what": r.role, "detail": f"{summary} ({r.seconds:.1f} s)",
                    "call": call_whom(r.responsible) if r.level == RED else ""})
        for f in sorted(problems, key=lambda f: -_RANK[f.level]):
            out.append({"level": f.level, "node": "", "what": f.subject, "detail": f.message,
                        "call": call_whom(r.responsible) if f.level == RED else ""})
    return out


def as_json(region: Region, results: list[NodeHealth], checked_at: float) -> dict[str, Any]:
    return {
        "region": region.region.name, "checked_at": round(checked_at, 1),
        "level": worst(r.level for r in results),
        "nodes": {r.node: {"level": r.level, "role": r.role, "hospitals": r.hospitals, "seconds": r.seconds,
                           "responsible": [p.model_dump() for p in r.responsible],
                           "findings": [f.__dict__ for f in r.findings]} for r in results},
    }


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus(results: list[NodeHealth]) -> str:
    """node_exporter's textfile-collector format (one file, written whole)."""
    lines = ["# HELP kontur_check_level The node's state: 0 green, 1 yellow, 2 red.",
             "# TYPE kontur_check_level gauge"]
    lines += [f'kontur_check_level{{node="{_label(r.node)}",role="{r.role}"}} {_RANK[r.level]}' for r in results]
    lines += ["# HELP kontur_check_reachable 1 when the node answered the probe over SSH.",
              "# TYPE kontur_check_reachable gauge"]
    lines += [f'kontur_check_reachable{{node="{_label(r.node)}"}} {0 if r.probe is None else 1}' for r in results]
    lines += ["# HELP kontur_check_findings Problems found, by level.", "# TYPE kontur_check_findings gauge"]
    for r in results:
        for level in (YELLOW, RED):
            n = sum(1 for f in r.findings if f.level == level)
            lines.append(f'kontur_check_findings{{node="{_label(r.node)}",level="{level}"}} {n}')
    lines += ["# HELP kontur_check_seconds How long the node's probe took.", "# TYPE kontur_check_seconds gauge"]
    lines += [f'kontur_check_seconds{{node="{_label(r.node)}"}} {r.seconds}' for r in results]
    disk, certs, queue, overdue = [], [], [], []
    for r in results:
        p = r.probe or {}
        for label, d in (p.get("disk") or {}).items() if not _error(p.get("disk")) else ():
            disk.append(f'kontur_check_disk_used_percent{{node="{_label(r.node)}",volume="{label}",'
                        f'path="{_label(d["path"])}"}} {d["used_percent"]}')
        for path, c in (p.get("certificates") or {}).items() if not _error(p.get("certificates")) else ():
            if "not_after" in c:
                certs.append(f'kontur_check_certificate_days_left{{node="{_label(r.node)}",file="{_label(path)}"}} '
                             f'{days_left(c["not_after"], float(p.get("now") or 0))}')
        rep = ((p.get("orthanc") or {}).get("replication") or {})
        if isinstance(rep, dict) and rep.get("enabled"):
            queue.append(f'kontur_check_replication_queue_depth{{node="{_label(r.node)}"}} {rep.get("queue_depth") or 0}')
            overdue.append(f'kontur_check_replication_overdue{{node="{_label(r.node)}"}} {rep.get("overdue") or 0}')
    for name, help_, body in (("kontur_check_disk_used_percent", "Disk used, percent.", disk),
                              ("kontur_check_certificate_days_left", "Days until the certificate expires.", certs),
                              ("kontur_check_replication_queue_depth", "Studies queued for the upstream.", queue),
                              ("kontur_check_replication_overdue", "Studies past their delivery deadline.", overdue)):
        if body:
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", *body]
    return "\n".join(lines) + "\n"
