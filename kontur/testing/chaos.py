"""The chaos run: studies stream into a deployed lab region while faults are
injected at random, then a ledger of every SOP Instance UID sent is checked
against what the TsAMI holds, read from the TsAMI itself (issue 9).

Used by ``bench/chaos.py`` (default 30 minutes, 10,000 instances spread over
them) and by the
lab suite's short variant (``tests/replication/test_replication_lab_chaos.py``).
The region is the replication region (``tests/data/replication-region.yaml``)
deployed into the running lab: a LAMI under policy ``all`` (8 Mbit/s cap), a
LAMI under ``pathology`` (a third of its studies are flagged through REST
after they are sent; only those may reach the TsAMI), and a mobile unit's
gateway that deletes its copies once they are verified.

Faults, one every 20-40 s (seeded, from a generator of their own; the seed is
printed), each kind once per cycle in a shuffled order; a run goes past its
deadline until every kind has come once, so a short run sees every kind:

``cut``         a node's link (a LAMI's, the gateway's or the TsAMI's) cut for 10-30 s, then healed
``kill9``       ``kill -9`` of a LAMI's, the gateway's or the TsAMI's Orthanc (systemd starts it again)
``reboot``      a LAMI's or the gateway's host powered off and booted again
``disk_full``   the TsAMI's storage made full for a minute (its storage directory is a
                size-limited tmpfs for the run; a ballast file fills it)
``pg_restart``  PostgreSQL restarted under a LAMI's or the TsAMI's Orthanc

Simulated modalities (DCMTK storescu in their network namespaces, as
``kontur lab send``) re-send a study until the node stored all of it, as a
device does; a study enters the ledger once its node acknowledged every
instance.  Patients of a run are ``CHAOS-<seed>-…``, so the check looks at this
run's studies only: every one expected at the TsAMI is there exactly once
under its own patient (0 lost, 0 extra, 0 misfiled), and no unflagged
pathology-LAMI study is there.
"""
from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .dicom import make_study
from .orthanc import wait_for

KINDS = ("cut", "kill9", "reboot", "disk_full", "pg_restart")
TSAMI, ALL, PATH, GW = "repl-tsami", "all-lami", "path-lami", "mobile-gw"
MODALITIES = {"ONCO_CT1": ALL, "KEM_DX1": PATH, "MOBILE_MG1": GW}
TARGETS = {
    "cut": (ALL, PATH, GW, TSAMI),
    "kill9": (ALL, PATH, GW, TSAMI),
    "reboot": (ALL, PATH, GW),
    "disk_full": (TSAMI,),
    "pg_restart": (ALL, PATH, TSAMI),
}
BALLAST = ".kontur-chaos-ballast"


@dataclass
class Sent:
    sop_uid: str
    study_uid: str
    patient_id: str
    node: str
    expected: bool          # must reach the TsAMI (False: an unflagged study of the pathology LAMI)


@dataclass
class Report:
    seed: int
    seconds: float
    studies: int
    instances: int
    expected: int
    faults: Counter
    fault_log: list[str]
    drain_seconds: float | None
    lost: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    misfiled: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.extra or self.misfiled or self.duplicates or self.leaked)

    def lines(self) -> list[str]:
        faults = ", ".join(f"{k} {self.faults.get(k, 0)}" for k in KINDS)
        drain = f"{self.drain_seconds:.1f} s" if self.drain_seconds is not None else "did not drain"
        return [
            f"chaos run, seed {self.seed}: {self.seconds:.0f} s, {self.studies} studies, {self.instances} instances "
            f"sent ({self.expected} to reach the TsAMI)",
            f"faults injected: {faults} ({sum(self.faults.values())} in all)",
            f"drain after the last fault: {drain}",
            f"ledger at the TsAMI: {len(self.lost)} lost, {len(self.extra)} extra, {len(self.misfiled)} misfiled, "
            f"{len(self.duplicates)} duplicated, {len(self.leaked)} unflagged pathology studies -- "
            + ("OK" if self.ok else "FAILED"),
        ]


class Chaos:
    def __init__(self, state, region, *, seed: int, seconds: float, instances: int | None = None,
                 interval: tuple[float, float] = (20.0, 40.0), kinds: tuple[str, ...] = KINDS,
                 study_size: tuple[int, int] = (1, 6), pixel_bytes: int = 4096, workdir: Path,
                 on_host: Callable[..., subprocess.CompletedProcess], log: Callable[[str], None] = print,
                 tmpfs_mb: int = 2048):
        from .. import nodeapi
        self.state = state
        self.region = region                     # the inventory as written (client_for maps it to the lab)
        self.seed = seed
        self.rng = random.Random(seed)
        # the faults draw from their own generator: the modalities' threads draw from
        # self.rng at times of their own, which would make the fault sequence vary by run
        self.fault_rng = random.Random(seed * 7919 + 1)
        self.seconds = seconds
        self.instances_goal = instances
        self.interval = interval
        self.kinds = kinds
        self.study_size = study_size
        self.pixel_bytes = pixel_bytes
        self.workdir = Path(workdir)
        self.on_host = on_host
        self.log = log
        self.tmpfs_mb = tmpfs_mb
        self.api = {n: nodeapi.client_for(region, n, lab=True) for n in (TSAMI, ALL, PATH, GW)}
        for c in self.api.values():
            c.timeout = 20
        self.sent: dict[str, Sent] = {}
        self.studies = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.faults: Counter = Counter()
        self.fault_log: list[str] = []
        self.storage = region.nodes[TSAMI].storage_dir
        self.t0 = time.monotonic()

    # --- the run ----------------------------------------------------------------------

    def run(self) -> Report:
        self.log(f"chaos: seed {self.seed}, {self.seconds:.0f} s of faults every {self.interval[0]:g}-"
                 f"{self.interval[1]:g} s, kinds {', '.join(self.kinds)}")
        if "disk_full" in self.kinds:
            self.limit_tsami_storage()
        senders = [threading.Thread(target=self._modality, args=(aet,), name=f"chaos-{aet}", daemon=True)
                   for aet in MODALITIES]
        self.t0 = time.monotonic()
        for th in senders:
            th.start()
        last_fault_end = time.monotonic()
        try:
            order: list[str] = []
            injected: set[str] = set()
            deadline = self.t0 + self.seconds
            # faults go on to the deadline, and past it until every kind has come once
            while time.monotonic() < deadline or injected != set(self.kinds):
                wait = self.fault_rng.uniform(*self.interval)
                if injected == set(self.kinds):
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                if self._stop.wait(wait):
                    break
                if time.monotonic() >= deadline and injected == set(self.kinds):
                    break
                if not order:
                    order = list(self.kinds)
                    self.fault_rng.shuffle(order)
                kind = order.pop()
                node = self.fault_rng.choice(TARGETS[kind])
                self._inject(kind, node)
                injected.add(kind)
                last_fault_end = time.monotonic()
        finally:
            self._stop.set()
            self.heal_everything()
        for th in senders:
            th.join(timeout=600)
        drain = self._drain(last_fault_end)
        return self.verify(time.monotonic() - self.t0, drain)

    def _goal_reached(self) -> bool:
        return self.instances_goal is not None and len(self.sent) >= self.instances_goal

    def _keep_pace(self) -> None:
        """With an instance goal, spread it over the run (faults go on to the end):
        a modality waits while the region is ahead of schedule."""
        if self.instances_goal is None:
            return
        while not self._stop.is_set():
            elapsed = time.monotonic() - self.t0
            due = self.instances_goal * min(1.0, (elapsed + 5) / self.seconds)
            if len(self.sent) < due:
                return
            self._stop.wait(1.0)

    # --- the modalities ---------------------------------------------------------------------

    def _modality(self, aet: str) -> None:
        from ..lab import ops
        node = MODALITIES[aet]
        k = 0
        while not self._stop.is_set() and not self._goal_reached():
            self._keep_pace()
            if self._stop.is_set():
                break
            k += 1
            n = self.rng.randint(*self.study_size)
            pid = f"CHAOS-{self.seed}-{aet}-{k:05d}"
            study = make_study(n, patient_id=pid, patient_name="Хаос^Тест", n_series=1 + (n > 3),
                               pixel_bytes=self.pixel_bytes, modality={"ONCO_CT1": "CT", "KEM_DX1": "DX",
                                                                       "MOBILE_MG1": "MG"}[aet])
            d = self.workdir / aet / f"{k:05d}"
            study.write(d)
            flagged = node != PATH or k % 3 == 0
            # a device re-sends until the node stored the whole study (the node may be down)
            while True:
                r = ops.send(aet, [d])
                if r.ok and r.stored == r.files:
                    break
                time.sleep(2)                                   # as a device waits before it retries
                if self._stop.is_set() and time.monotonic() - self.t0 > self.seconds + 600:
                    self.log(f"chaos: {aet} gave up study {k} after the run ended")
                    return
            if node == PATH and flagged:
                self._retry(lambda: self.api[PATH].post("kontur/flag", {"study": study.study_uid, "pathology": True}),
                            f"flag {study.study_uid}")
            with self._lock:
                self.studies += 1
                for i in study.instances:
                    self.sent[i.sop_uid] = Sent(i.sop_uid, study.study_uid, pid, node, flagged)

    def _retry(self, fn, what: str, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fn()
                return
            except Exception as exc:  # noqa: BLE001 - the node may be down right now
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chaos: {what} failed for {timeout:.0f} s: {exc}") from None
                time.sleep(2)

    # --- faults --------------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
        self.fault_log.append(line)
        self.log(f"chaos: {line}")

    def _inject(self, kind: str, node: str) -> None:
        from ..lab import ops
        self.faults[kind] += 1
        if kind == "cut":
            hold = self.rng.uniform(10, 30)
            self._note(f"cut {node} for {hold:.0f} s")
            ops.set_link(node, False)
            try:
                time.sleep(hold)                                # the length of the partition
            finally:
                ops.set_link(node, True)
        elif kind == "kill9":
            pid = self._main_pid(node, "orthanc.service")
            self._note(f"kill -9 of {node}'s Orthanc (pid {pid})")
            self._sh(node, f"kill -9 {pid}")
        elif kind == "reboot":
            self._note(f"reboot of {node}")
            ops.reboot(node)
        elif kind == "disk_full":
            self._note(f"{node}'s storage full for 60 s")
            self._sh(node, f"fallocate -l $(df --output=avail -B1 {self.storage} | tail -n 1) "
                           f"{self.storage}/{BALLAST} || true; df -h {self.storage} | tail -n 1")
            try:
                time.sleep(60)
            finally:
                self._sh(node, f"rm -f {self.storage}/{BALLAST}")
        elif kind == "pg_restart":
            self._note(f"PostgreSQL restarted under {node}'s Orthanc")
            self._sh(node, "systemctl restart postgresql@15-main.service")
        else:  # pragma: no cover
            raise ValueError(kind)

    def heal_everything(self) -> None:
        from ..lab import ops
        for node in (TSAMI, ALL, PATH, GW):
            try:
                ops.set_link(node, True)
            except Exception as exc:  # noqa: BLE001
                self.log(f"chaos: healing {node}: {exc}")
        try:
            self._sh(TSAMI, f"rm -f {self.storage}/{BALLAST}")
        except Exception as exc:  # noqa: BLE001
            self.log(f"chaos: removing the ballast: {exc}")

    def _sh(self, node: str, command: str, timeout: float = 120) -> str:
        p = self.on_host(self.state, node, command, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{node}: {command}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
        return p.stdout

    def _main_pid(self, node: str, unit: str) -> int:
        deadline = time.monotonic() + 120
        while True:
            pid = int(self._sh(node, f"systemctl show -p MainPID --value {unit}").strip() or 0)
            if pid:
                return pid
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node}: {unit} has no main process")
            time.sleep(1)

    def limit_tsami_storage(self) -> None:
        """Move the TsAMI's storage onto a size-limited tmpfs for the run (mounted
        inside the host's mount namespace from outside: containers may not mount)."""
        from ..lab import hosts
        d = self.storage
        marker = f"/run/kontur-chaos-tmpfs"
        if self._sh(TSAMI, f"test -e {marker} && echo yes || true").strip() == "yes":
            return                                          # an earlier run of this lab did it
        self._sh(TSAMI, f"systemctl stop orthanc.service && rm -rf {d}.chaos-copy && cp -a {d} {d}.chaos-copy")
        leader = hosts.container_leader(self.state.host(TSAMI).pid)
        subprocess.run(["nsenter", "-t", str(leader), "-m", "--", "mount", "-t", "tmpfs", "-o",
                        f"size={self.tmpfs_mb}m,mode=0750", "kontur-chaos", d], check=True)
        self._sh(TSAMI, f"cp -a {d}.chaos-copy/. {d}/ && chown orthanc:orthanc {d} && rm -rf {d}.chaos-copy && "
                        f"touch {marker} && systemctl start orthanc.service", timeout=600)
        wait_for(lambda: self.api[TSAMI].get("system"), 120, interval=1, message="the TsAMI's Orthanc again")

    # --- the end ----------------------------------------------------------------------------------

    def _expected(self) -> dict[str, Sent]:
        with self._lock:
            return {k: v for k, v in self.sent.items() if v.expected}

    def _tsami_holds(self) -> dict[str, list[tuple[str, str]]]:
        """SOP Instance UID -> [(PatientID, StudyInstanceUID)] of this run's patients at the TsAMI."""
        api = self.api[TSAMI]
        prefix = f"CHAOS-{self.seed}-"
        out: dict[str, list[tuple[str, str]]] = {}
        for st in api.get("studies?expand"):
            pid = (st.get("PatientMainDicomTags") or {}).get("PatientID", "")
            if not pid.startswith(prefix):
                continue
            for inst in api.get(f"studies/{st['ID']}/instances"):
                sop = inst["MainDicomTags"]["SOPInstanceUID"]
                out.setdefault(sop, []).append((pid, st["MainDicomTags"].get("StudyInstanceUID", "")))
        return out

    def _drain(self, since: float) -> float | None:
        expected = self._expected()
        self.log(f"chaos: waiting for {len(expected)} instances at the TsAMI")
        try:
            wait_for(lambda: set(expected) <= set(self._tsami_holds()), 1800, interval=3,
                     message="the backlog to drain")
            took = time.monotonic() - since
            # and nothing more on its way (a leak or a duplicate would come now)
            wait_for(lambda: all((s := self.api[n].replication_status())["queue_depth"] == 0
                                 and s["in_flight"] is None for n in (ALL, PATH, GW)), 600, interval=2,
                     message="every queue empty")
        except TimeoutError as exc:
            self.log(f"chaos: {exc}")
            return None
        return took

    def verify(self, seconds: float, drain: float | None) -> Report:
        expected = self._expected()
        with self._lock:
            sent = dict(self.sent)
        held = self._tsami_holds()
        lost = sorted(set(expected) - set(held))
        extra = sorted(s for s in held if s not in sent)
        duplicates = sorted(s for s, where in held.items() if len(where) > 1)
        misfiled = sorted(s for s, where in held.items() if s in sent and
                          any(w != (sent[s].patient_id, sent[s].study_uid) for w in where))
        leaked = sorted(s for s in held if s in sent and not sent[s].expected)
        return Report(self.seed, seconds, self.studies, len(sent), len(expected), self.faults, self.fault_log,
                      drain, lost, extra, misfiled, duplicates, leaked)
