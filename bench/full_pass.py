#!/usr/bin/env python3
# SPDX-License-Identifier: AGPL-3.0-or-later
"""The replication full pass on an oncology centre's archive (R13: 183k
studies), beside the approach before issue 9, measured in the same run.

    .venv/bin/python bench/full_pass.py [--studies 183000] [--baseline-rev c76fbd2]

A generated archive -- one small CT instance per study, PostgreSQL index as
on a LAMI -- is made once and cached under /var/cache/kontur/bench/ (filling
Orthanc runs at ~120 instances/s here, so the first run takes a while).  The
TsAMI holds the same studies (a copy of the LAMI's index database and
storage: as if everything had been replicated).  Then, on the same archives:

* **kontur** -- this checkout's plugin in the LAMI's Orthanc: a full pass
  (``POST /kontur/full-pass``) to its end, then a second one;
* **before** -- the plugin of ``--baseline-rev`` (``git archive``), which
  paged ``/studies?expand&since=N`` (OFFSET) and asked QIDO-RS for
  per-study instance counts, run the same way (it starts its pass itself).

For each pass it prints seconds, requests the TsAMI received (counted in an
nginx access log in front of it), DICOM files the TsAMI's Orthanc opened
(``strace -e openat`` on it, under its storage directory), and the peak
resident memory of the LAMI's Orthanc (the plugin runs inside it; VmHWM
reset before each pass).  Every process started is stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kontur.testing.dicom import make_instance  # noqa: E402
from kontur.testing.orthanc import DICOMWEB_PLUGIN, ORTHANC_BIN, OrthancProcess, free_port, wait_for  # noqa: E402
from kontur.testing.postgres import PLUGIN as PG_PLUGIN, PostgresProcess  # noqa: E402
from kontur.testing.rendered import NginxProcess  # noqa: E402
from kontur.testing.replication import PEER_PASSWORD, PEER_USER, make_policy, node_config, tsami_config  # noqa: E402

CACHE = Path(os.environ.get("KONTUR_BENCH_CACHE", "/var/cache/kontur/bench"))


class TracedOrthanc(OrthancProcess):
    """Orthanc started under ``strace -f -e trace=openat`` (seccomp filter: other
    system calls run untraced), to count the DICOM files it opens."""

    def __init__(self, *a, trace: Path, **kw):
        super().__init__(*a, **kw)
        self.trace = trace

    def _spawn(self) -> None:
        import kontur.testing.orthanc as base
        real = base.ORTHANC_BIN
        wrapper = self.workdir / "orthanc-traced"
        wrapper.write_text(f"#!/bin/sh\nexec strace -f -qq --seccomp-bpf -e trace=openat -e signal=none "
                           f"-o {self.trace} {real} \"$@\"\n")
        wrapper.chmod(0o755)
        base.ORTHANC_BIN = str(wrapper)
        try:
            super()._spawn()
        finally:
            base.ORTHANC_BIN = real

    def stop(self) -> None:
        """Stop Orthanc itself first: strace, told to stop, detaches and leaves
        the Orthanc it traces running."""
        import os
        import signal
        import time
        if self.proc is not None and self.proc.poll() is None:
            pid = self.orthanc_pid()
            if pid != self.proc.pid:
                try:
                    os.kill(pid, signal.SIGTERM)
                    deadline = time.monotonic() + 60
                    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                        time.sleep(0.2)
                    if Path(f"/proc/{pid}").exists():
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        super().stop()

    def orthanc_pid(self) -> int:
        """The Orthanc process below strace."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else self.proc.pid


def file_opens(trace: Path, storage: Path) -> int:
    if not trace.exists():
        return 0
    needle = str(storage)
    return sum(1 for line in trace.open(errors="replace") if needle in line and "openat(" in line
               and "O_DIRECTORY" not in line)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the generated archive ---------------------------------------------------------


def generate(n: int, where: Path) -> None:
    """A LAMI archive of ``n`` one-instance studies in PostgreSQL (cached)."""
    if (where / "done").exists():
        return
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    pg = PostgresProcess(where / "pg", durable=False).start()
    try:
        pg.create_database("lami")
        cfg = {"Plugins": [PG_PLUGIN], **pg.orthanc_index("lami"), "SyncStorageArea": False,
               "StorageDirectory": str(where / "storage"), "IndexDirectory": str(where / "storage")}
        o = OrthancProcess("gen", cfg, where / "gen")
        o.start()
        try:
            t0 = time.monotonic()

            def one(k: int) -> None:
                inst = make_instance(patient_id=f"P{k % 40000:05d}", patient_name="Иванов^Иван",
                                     study_uid=f"1.2.826.0.1.3680043.10.1499.9.{k}",
                                     series_uid=f"1.2.826.0.1.3680043.10.1499.9.{k}.1",
                                     sop_uid=f"1.2.826.0.1.3680043.10.1499.9.{k}.1.1", pixel_bytes=256)
                o.upload(inst.data)

            with ThreadPoolExecutor(4) as pool:
                for k, _ in enumerate(pool.map(one, range(n))):
                    if k and k % 5000 == 0:
                        rate = k / (time.monotonic() - t0)
                        print(f"  generated {k} of {n} studies ({rate:.0f}/s, ~{(n - k) / rate / 60:.0f} min left)",
                              flush=True)
        finally:
            o.stop()
    finally:
        pg.stop()
    (where / "done").write_text(str(n))


def copy_archive(src: Path, dst: Path) -> None:
    """Two copies (LAMI, TsAMI) of the cached archive: hard links for the
    storage (Orthanc never rewrites a stored file), a fresh copy of the cluster."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(src / "pg"), str(dst / "pg")], check=True)
    for role in ("lami", "tsami"):
        subprocess.run(["cp", "-al", str(src / "storage"), str(dst / f"storage-{role}")], check=True)


def baseline_plugin(rev: str, into: Path) -> Path | None:
    """The plugin of ``rev`` from this checkout's history (None if not available)."""
    try:
        data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "plugins"], check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    into.mkdir(parents=True, exist_ok=True)
    import io
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:                          # Python < 3.11.4: our own archive, trusted
            tar.extractall(into)
    return into / "plugins" / "kontur_entry.py"


# --- one approach --------------------------------------------------------------------


def run_approach(name: str, entry: Path, work: Path, pg: PostgresProcess, tsami_url: str, nginx: NginxProcess,
                 tsami: TracedOrthanc, trace: Path, n: int, tsami_storage: Path, passes: int) -> list[dict]:
    state = work / f"state-{name}"
    shutil.rmtree(state, ignore_errors=True)
    policy = make_policy(tsami_url, state, mode="all", tuning={"full_pass_first_delay_seconds": 2,
                                                               "full_pass_interval_seconds": 10 ** 7,
                                                               "full_pass_pause_seconds": 0,
                                                               "full_pass_page": 100})
    ppath = work / f"policy-{name}.json"
    ppath.write_text(json.dumps(policy))
    cfg = node_config(ppath)
    cfg["PythonScript"] = str(entry)
    cfg["Plugins"] = [PG_PLUGIN, DICOMWEB_PLUGIN, cfg["Plugins"][-1]]
    cfg.update(pg.orthanc_index("lami"))
    cfg.update({"StorageDirectory": str(work / "archive" / "storage-lami"),
                "IndexDirectory": str(work / "archive" / "storage-lami")})
    lami = OrthancProcess(f"lami-{name}", cfg, work / f"lami-{name}")
    lami.start()
    out = []
    try:
        previous = None
        for k in range(passes):
            reset_peak(lami.pid)
            reqs0 = len(nginx.access_log().splitlines())
            opens0 = file_opens(trace, tsami_storage)
            if name == "kontur":
                lami.post("/kontur/full-pass", {})
            elif k > 0:
                lami.restart()                         # the old plugin ran its pass when it started only
            done = wait_for(lambda: _finished(lami, name, k + 1, previous), 24 * 3600, interval=0.5,
                            message=f"{name}'s full pass {k + 1}")
            previous = done.get("finished_at")
            st = lami.get("/kontur/replication")
            out.append({"approach": name, "pass": k + 1, "seconds": done["finished_at"] - done["started_at"],
                        "requests": len(nginx.access_log().splitlines()) - reqs0,
                        "tsami_files": file_opens(trace, tsami_storage) - opens0,
                        "peak_mb": peak_mb(lami.pid), "rss_mb": rss_mb(lami.pid),
                        "queued": _requeued(done), "queue": st.get("queue_depth")})
            print(f"  {name} pass {k + 1}: {out[-1]}", flush=True)
    finally:
        lami.stop()
    return out


def _finished(lami: OrthancProcess, name: str, number: int, previous: float | None):
    """The pass's record (started_at, finished_at, stats) once it has ended."""
    fp = lami.get("/kontur/replication").get("full_pass") or {}
    if name == "kontur":
        done = fp.get("last_completed") or {}
        return done if done.get("pass", 0) >= number and fp.get("state") == "done" else None
    # the plugin before issue 9 kept one record per pass: started_at, finished_at and its counts
    return fp if fp.get("finished_at") and fp.get("finished_at") != previous else None


def _requeued(done: dict) -> int:
    return int((done.get("stats") or done).get("requeued", 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=183_000)
    ap.add_argument("--baseline-rev", default="c76fbd2",
                    help="the commit whose plugin is 'before' (default: the last one before issue 9)")
    ap.add_argument("--passes", type=int, default=2, help="kontur's passes (the second shows the steady state)")
    ap.add_argument("--baseline-passes", type=int, default=1,
                    help="passes of the plugin before (it learns nothing from one pass to the next)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/full_pass.py: run as root (PostgreSQL runs as the postgres user)", file=sys.stderr)
        return 2
    if not shutil.which("strace"):
        print("bench/full_pass.py: strace is needed to count the TsAMI's file reads (apt-get install strace)",
              file=sys.stderr)
        return 2
    cached = CACHE / f"fullpass-{args.studies}"
    print(f"archive of {args.studies} studies: {cached}", flush=True)
    generate(args.studies, cached)
    work = Path(tempfile.mkdtemp(prefix="kontur-fullpass-"))
    work.chmod(0o755)                       # PostgreSQL runs as the postgres user
    results: list[dict] = []
    try:
        copy_archive(cached, work / "archive")
        subprocess.run(["chown", "-R", "postgres:postgres", str(work / "archive" / "pg")], check=True)
        pg = PostgresProcess(work / "archive" / "pg", durable=False)
        pg.data = work / "archive" / "pg" / "data"
        pg.start()
        try:
            subprocess.run([str(Path("/usr/lib/postgresql/15/bin/createdb")), "-h", "127.0.0.1", "-p",
                            str(pg.port), "-U", "postgres", "-T", "lami", "tsami"], check=True,
                           preexec_fn=pg._as_user())
            lua = work / "accept.lua"
            lua.write_text("function ReceivedInstanceFilter(d, o, i) return true end\n")
            tcfg = tsami_config(lua, work / "tsami-state")
            tcfg["Plugins"].insert(0, PG_PLUGIN)
            tcfg.update(pg.orthanc_index("tsami"))
            tstore = work / "archive" / "storage-tsami"
            tcfg.update({"StorageDirectory": str(tstore), "IndexDirectory": str(tstore),
                         "RegisteredUsers": {PEER_USER: PEER_PASSWORD}})
            trace = work / "tsami-openat.log"
            tsami = TracedOrthanc("tsami", tcfg, work / "tsami", trace=trace)
            tsami.start()
            nginx = NginxProcess(_plain_site(tsami.http_port, port := free_port()), work / "nginx")
            nginx.start(port)
            try:
                url = f"http://127.0.0.1:{port}/"
                print(f"the TsAMI holds {tsami.statistics()['CountStudies']} studies; Orthanc pid "
                      f"{tsami.orthanc_pid()}", flush=True)
                results += run_approach("kontur", REPO / "plugins" / "kontur_entry.py", work, pg, url, nginx,
                                        tsami, trace, args.studies, tstore, args.passes)
                old = baseline_plugin(args.baseline_rev, work / "baseline")
                if old is None:
                    print(f"  (no plugin of {args.baseline_rev} in this checkout's history: 'before' not measured)")
                else:
                    results += run_approach("before", old, work, pg, url, nginx, tsami, trace, args.studies,
                                            tstore, args.baseline_passes)
            finally:
                nginx.stop()
                tsami.stop()
        finally:
            pg.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = ["approach", "pass", "seconds", "requests to the TsAMI", "files the TsAMI opened",
            "LAMI Orthanc peak RSS MB", "queued again"]
    rows = [[r["approach"], str(r["pass"]), f"{r['seconds']:.1f}", str(r["requests"]), str(r["tsami_files"]),
             f"{r['peak_mb']:.0f}", str(r["queued"])] for r in results]
    widths = [max(len(h), *(len(row[k]) for row in rows)) if rows else len(h) for k, h in enumerate(head)]
    print(f"\nfull pass over {args.studies} studies (PostgreSQL index, 1 instance each)")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return 0


def _plain_site(orthanc_port: int, port: int) -> str:
    return (f"upstream o {{ server 127.0.0.1:{orthanc_port}; keepalive 8; }}\n"
            f"server {{ listen 127.0.0.1:{port}; client_max_body_size 0;\n"
            "  location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }\n")


if __name__ == "__main__":
    sys.exit(main())
