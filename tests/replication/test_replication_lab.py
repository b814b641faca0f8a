# SPDX-License-Identifier: AGPL-3.0-or-later
"""Hybrid replication LAMI -> TsAMI end to end in the region lab (issue 5).

The replication test region (tests/data/replication-region.yaml) is brought
up once and deployed once with ``kontur deploy --lab``; then, on real hosts
over the lab's network and nginx mutual TLS:

- the deployed LAMIs and gateway run kontur's plugin with the rendered policy;
- studies sent by a simulated modality (DCMTK storescu as its AE title) reach
  the TsAMI under ``all``, late instances follow;
- under ``pathology`` only flagged studies go; an operator pushes another one
  with ``kontur replicate --lab``;
- the hospital's bandwidth cap holds within 10 %, measured on the wire;
- an outage: the LAMI's uplink (the TsAMI's link) is cut while 50 studies
  arrive, then healed, and the LAMI's own link is cut while the backlog
  drains: every instance arrives exactly once; the gateway keeps accepting
  during the outage and deletes only what the TsAMI was verified to hold;
- ``kill -9`` of the LAMI's Orthanc mid-transfer, and a reboot of the LAMI
  host mid-transfer, lose nothing.

Every check compares SOP Instance UIDs at the TsAMI (with repetitions: a
duplicate would show).  Waits give up after generous limits; the only timing
assertion is the bandwidth cap.  Links are healed in ``finally`` blocks; the
lab fixture tears everything down.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from kontur import nodeapi
from kontur.lab import ops
from kontur.lab.state import lab_region
from kontur.testing.dicom import Study, add_series, make_study
from kontur.testing.orthanc import wait_for

from deploy_helpers import kontur, on_host

pytestmark = pytest.mark.lab

REPLICATION_REGION = Path(__file__).resolve().parents[1] / "data" / "replication-region.yaml"

TSAMI, ALL, PATH, GW = "repl-tsami", "all-lami", "path-lami", "mobile-gw"
CT, DX, MG = "ONCO_CT1", "KEM_DX1", "MOBILE_MG1"
CAP_MBIT = 8            # the onco hospital's bandwidth_mbit in the region file
OUTAGE_STUDIES = 50


# --- helpers ---------------------------------------------------------------------


class Node:
    """A node's REST API through nodeapi (the CLI's own client, lab addresses)."""

    def __init__(self, region, name: str, timeout: float = 30):
        self.name = name
        self.api = nodeapi.client_for(region, name, lab=True)
        self.api.timeout = timeout

    def status(self) -> dict:
        return self.api.replication_status()

    def sop_list(self, study: Study) -> list[str]:
        """SOP Instance UIDs held for ``study``, with repetitions; [] if none."""
        try:
            instances = self.api.get(f"studies/{study.orthanc_id()}/instances")
        except nodeapi.NodeError as exc:
            if exc.status == 404:
                return []
            raise
        return [i["MainDicomTags"]["SOPInstanceUID"] for i in instances]

    def holds(self, study: Study) -> set[str]:
        return set(self.sop_list(study))

    def stable_seen(self, study: Study) -> bool:
        sid = study.orthanc_id()
        return any(c["ChangeType"] == "StableStudy" and c["ID"] == sid
                   for c in self.api.get("changes?limit=1000")["Changes"])

    def caught_up(self) -> dict | None:
        """The status once the plugin has read every change and no study awaits stability."""
        last = self.api.get("changes?last")["Last"]
        st = self.status()
        return st if st["changes_seq"] >= last and st["awaiting_stable"] == 0 else None

    def main_pid(self, lab, unit: str = "orthanc.service") -> int:
        p = on_host(lab, self.name, f"systemctl show -p MainPID --value {unit}")
        assert p.returncode == 0, p.stderr
        return int(p.stdout.strip() or 0)


def send(aet: str, studies: list[Study], directory: Path, instances=None) -> int:
    """C-STORE the studies (or just ``instances``) as modality ``aet`` with
    ``kontur lab send``'s code (storescu in the modality's namespace)."""
    directory.mkdir(parents=True, exist_ok=True)
    items = instances if instances is not None else [i for s in studies for i in s.instances]
    for i in items:
        (directory / f"{i.sop_uid}.dcm").write_bytes(i.data)
    r = ops.send(aet, [directory])
    assert r.ok and r.stored == len(items) == r.files, r.stderr[-2000:]
    return r.stored


def delivered(tsami: Node, study: Study) -> bool:
    return tsami.holds(study) == study.sop_uids


def wait_delivered(tsami: Node, studies: list[Study], timeout: float = 180, what: str = "") -> float:
    t0 = time.monotonic()
    wait_for(lambda: all(delivered(tsami, s) for s in studies), timeout, interval=0.5,
             message=f"{what or f'{len(studies)} studies'} at the TsAMI")
    return time.monotonic() - t0


def assert_exactly_once(tsami: Node, studies: list[Study]) -> int:
    """Every instance of every study at the TsAMI, none twice; returns the count."""
    total = 0
    for s in studies:
        held = tsami.sop_list(s)
        assert sorted(held) == sorted(s.sop_uids), (
            f"study {s.orthanc_id()}: TsAMI holds {len(held)} ({len(set(held))} distinct) of {len(s.sop_uids)}")
        total += len(held)
    return total


def heal_all(*nodes: str) -> None:
    """Bring the links of ``nodes`` up again (each one tried; the first failure raised)."""
    failed = None
    for n in nodes:
        try:
            ops.set_link(n, True)
        except Exception as exc:  # noqa: BLE001 - heal what can be healed, then say so
            failed = failed or exc
    if failed is not None:
        raise failed


# --- fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def nodes(deployed, region) -> dict[str, Node]:
    return {n: Node(region, n) for n in (TSAMI, ALL, PATH, GW)}


# --- the deployed plugin -------------------------------------------------------------

@pytest.mark.parametrize("node, mode, gateway", [(ALL, "all", False), (PATH, "pathology", False),
                                                 (GW, "all", True)])
def test_deployed_node_runs_the_plugin_with_its_rendered_policy(deployed, region, nodes, node, mode, gateway):
    p = on_host(deployed, node, "stat -c '%n %U:%G %a' /etc/kontur/policy.json /var/lib/kontur "
                                "/var/lib/kontur/replication.sqlite3 /usr/lib/kontur/plugins/kontur_entry.py "
                                "/usr/lib/kontur/plugins/kontur_plugins/replication/engine.py; "
                                "cat /etc/kontur/policy.json; "
                                "grep -h 'kontur: replication enabled' /var/log/orthanc/*.log | tail -n 1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    stats = dict(ln.split(" ", 1) for ln in lines[:5])
    assert stats["/etc/kontur/policy.json"] == "orthanc:orthanc 600"
    assert stats["/var/lib/kontur"].startswith("orthanc:orthanc 7")
    assert stats["/var/lib/kontur/replication.sqlite3"].startswith("orthanc:orthanc")
    assert stats["/usr/lib/kontur/plugins/kontur_entry.py"] == "root:root 644"
    text = "\n".join(lines[5:])
    policy = json.loads(text[:text.rindex("}") + 1])
    assert f"replication enabled on {node}" in lines[-1], p.stdout

    tsami_addr = lab_region(region, deployed).nodes[TSAMI].address
    rep = policy["replication"]
    assert (rep["mode"], rep["gateway"], policy["state_dir"]) == (mode, gateway, "/var/lib/kontur")
    assert rep["upstream"]["url"] == f"https://{tsami_addr}:443/"
    assert rep["upstream"]["cert_file"] == "/etc/kontur/tls/node.crt"

    st = nodes[node].status()
    assert st["enabled"] is True and st["node"] == node
    assert st["policy"] == ("gateway" if gateway else mode)
    assert st["upstream"]["tls"] is True and st["upstream"]["client_certificate"] is True
    assert st["stable_age"] == 5
    assert st["bandwidth_mbit"] == (CAP_MBIT if node == ALL else None)
    assert st["retention_days"] == (0 if gateway else None)
    assert st["windows"] == [] and st["window_open"] is True


def test_the_tsami_does_not_replicate(deployed, nodes):
    st = nodes[TSAMI].status()
    assert st["enabled"] is False and "does not replicate" in st["reason"]


def test_replication_status_of_the_lab_region(deployed, nodes):
    r = kontur("replication", "status", "--lab", "-i", str(REPLICATION_REGION), "--json")
    assert r.rc == 0, r.out
    rows = json.loads(r.out)
    assert [row["node"] for row in rows] == [ALL, PATH, GW]
    assert all(row["reachable"] and row["problems"] == [] for row in rows), rows
    r = kontur("replication", "status", "--lab", "-i", str(REPLICATION_REGION))
    assert r.rc == 0, r.out
    for n in (ALL, PATH, GW):
        assert n in r.out


# --- policies ------------------------------------------------------------------------

def test_all_studies_from_a_modality_reach_the_tsami_and_late_instances_follow(deployed, nodes, tmp_path, figures):
    tsami, lami = nodes[TSAMI], nodes[ALL]
    before = lami.status()["counters"].get("deliveries_total", 0)
    studies = [make_study(3), make_study(4, n_series=2), make_study(1)]
    d = tmp_path / "studies"
    d.mkdir()
    for s in studies:
        s.write(d)
    r = kontur("lab", "send", CT, str(d))                  # the operator's command, as a modality
    assert r.rc == 0 and "8 of 8 file(s) stored" in r.out, r.out
    took = wait_delivered(tsami, studies, what="3 studies sent by ONCO_CT1")
    figures.append(f"policy all: 3 studies (8 instances) at the TsAMI {took:.1f} s after storescu ended (StableAge 5 s)")

    late = add_series(studies[0], 2)                      # a late series of a delivered study
    send(CT, [], tmp_path / "late", instances=late)
    wait_delivered(tsami, studies[:1], what="the late series")
    assert assert_exactly_once(tsami, studies) == 10
    st = lami.status()
    assert st["counters"]["deliveries_total"] >= before + 4     # three studies, then the first again
    assert (st["queue_depth"], st["failed"], st["parked"]) == (0, 0, 0)


def test_pathology_policy_sends_only_flagged_studies(deployed, nodes, tmp_path):
    tsami, lami = nodes[TSAMI], nodes[PATH]
    flagged, plain, early = make_study(2), make_study(2), make_study(2)
    send(DX, [flagged, plain], tmp_path / "a")
    wait_for(lambda: lami.stable_seen(flagged) and lami.stable_seen(plain), 120, interval=0.5,
             message="Orthanc's StableStudy events on path-lami")
    wait_for(lami.caught_up, 60, interval=0.5, message="path-lami's plugin to process every change")
    st = lami.status()
    assert st["queue_depth"] == 0 and st["in_flight"] is None
    assert tsami.holds(flagged) == tsami.holds(plain) == set()

    # flagged through REST after it was stable: goes at once
    answer = lami.api.post("kontur/flag", {"study": flagged.study_uid, "pathology": True})
    assert answer["pathology"] is True and answer["studies"][0]["state"] == "pending", answer
    # flagged while it is still arriving (as the HL7 result will do): goes once stable
    send(DX, [early], tmp_path / "b")
    lami.api.post("kontur/flag", {"study": early.study_uid, "pathology": True})
    wait_delivered(tsami, [flagged, early], what="the flagged studies")
    wait_for(lambda: (s := lami.caught_up()) and s["queue_depth"] == 0 and s["in_flight"] is None, 60,
             interval=0.5, message="path-lami idle")
    assert tsami.holds(plain) == set(), "an unflagged study reached the TsAMI under policy pathology"

    # the operator pushes the unflagged one by hand (R2 §3.3: import on demand)
    r = kontur("replicate", "--lab", "-i", str(REPLICATION_REGION), "--study", plain.study_uid, "--node", PATH)
    assert r.rc == 0, r.out
    assert plain.orthanc_id() in r.out or "pending" in r.out, r.out
    wait_delivered(tsami, [plain], what="the pushed study")
    assert assert_exactly_once(tsami, [flagged, early, plain]) == 6


# --- bandwidth cap -------------------------------------------------------------------------

def test_bandwidth_cap_holds_within_10_percent_on_the_wire(deployed, nodes, tmp_path, figures):
    """12 MB through an 8 Mbit/s cap: bytes leaving the LAMI on its link
    (the host side of its veth) counted every 50 ms."""
    tsami, lami = nodes[TSAMI], nodes[ALL]
    study = make_study(12, pixel_bytes=1_000_000)
    payload = study.nbytes
    counter = Path(f"/sys/class/net/{deployed.host(ALL).veth}/statistics/rx_bytes")
    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), int(counter.read_text())))
            stop.wait(0.05)

    counters0 = lami.status()["counters"]
    disk0 = int(tsami.api.get("statistics")["TotalDiskSize"])
    th = threading.Thread(target=sample, daemon=True)
    send(CT, [study], tmp_path / "cap")
    th.start()
    try:
        wait_delivered(tsami, [study], timeout=240, what="the 12 MB study")
    finally:
        stop.set()
        th.join()
    counters1 = lami.status()["counters"]
    disk1 = int(tsami.api.get("statistics")["TotalDiskSize"])

    base = samples[0][1]
    wire = samples[-1][1] - base
    assert wire >= payload, f"only {wire} bytes left the LAMI for a {payload}-byte study"

    def when(fraction: float) -> tuple[float, int]:
        return next((t, b - base) for t, b in samples if b - base >= fraction * wire)

    (t1, b1), (t2, b2) = when(0.05), when(0.95)
    rate = (b2 - b1) / (t2 - t1)                       # bytes/s on the wire, steady part
    cap = CAP_MBIT * 1_000_000 / 8
    sent = counters1.get("bytes_sent_total", 0) - counters0.get("bytes_sent_total", 0)
    figures.append(f"bandwidth cap {CAP_MBIT} Mbit/s: {wire / 1e6:.2f} MB on the wire for {payload / 1e6:.2f} MB of DICOM "
        f"(plugin counted {sent / 1e6:.2f} MB, TsAMI storage grew {(disk1 - disk0) / 1e6:.2f} MB); "
        f"steady rate {rate * 8 / 1e6:.2f} Mbit/s = {rate / cap:.3f} of the cap over {t2 - t1:.1f} s")
    assert sent >= 0.99 * payload           # as the LAMI stores the files
    assert 0.9 * cap <= rate <= 1.1 * cap, f"achieved {rate * 8 / 1e6:.2f} Mbit/s against a cap of {CAP_MBIT}"
    # and the whole transfer, from the first byte to the last, cannot beat the cap either
    first = next(t for t, b in samples if b - base > 0)
    assert samples[-1][0] - first >= 0.9 * payload / cap


# --- an outage: the TsAMI out of reach while 50 studies arrive ----------------------------------

@pytest.fixture(scope="module")
def outage(deployed, nodes, region, tmp_path_factory, figures):
    """The scenario both outage tests check, run once:

    1. a gateway study G1 goes and is deleted from the gateway (verified);
    2. the TsAMI's link is cut (the LAMI's and the gateway's uplink);
       50 studies arrive at the LAMI from its CT, a new study G2 and a late
       instance of G1 at the gateway from its mammograph; both nodes see the
       link fail and keep everything;
    3. the link heals; while the LAMI drains its backlog its own link is cut
       for 8 s and healed;
    4. everything is delivered.
    """
    tmp = tmp_path_factory.mktemp("outage")
    tsami, lami, gw = nodes[TSAMI], nodes[ALL], nodes[GW]
    rec: dict = {}

    g1 = make_study(2, modality="MG", pixel_bytes=4096)
    send(MG, [g1], tmp / "g1")
    wait_delivered(tsami, [g1], what="gateway study G1")
    wait_for(lambda: not gw.holds(g1), 120, interval=0.5, message="the gateway to delete G1 after delivery")
    rec["g1_at_tsami_after_delete"] = tsami.holds(g1)

    studies = [make_study(3, pixel_bytes=512) for _ in range(OUTAGE_STUDIES)]
    g2 = make_study(3, modality="MG", pixel_bytes=4096)
    lami0 = lami.status()
    try:
        ops.set_link(TSAMI, False)
        t_cut = time.monotonic()
        send(CT, studies, tmp / "studies")
        late = add_series(g1, 1)
        send(MG, [g2], tmp / "g2")
        send(MG, [], tmp / "g1-late", instances=late)
        rec["sent_during_cut"] = time.monotonic() - t_cut

        # both nodes queue everything and see the link fail
        def lami_sees_it():
            st = lami.caught_up()
            return st if st and st["queue_depth"] == OUTAGE_STUDIES and not st["link"]["up"] else None
        rec["lami_during"] = wait_for(lami_sees_it, 240, interval=1, message="all-lami to queue 50 studies "
                                                                             "and see its link down")
        rec["gw_during"] = wait_for(lambda: (st := gw.status()) and not st["link"]["up"] and st, 240,
                                    interval=1, message="mobile-gw to see its link down")
        rec["gw_holds_g2"] = gw.holds(g2)
        rec["gw_holds_g1"] = gw.holds(g1)
        probe = nodeapi.client_for(region, TSAMI, lab=True)
        probe.timeout = 5
        with pytest.raises(nodeapi.NodeError):
            probe.get("system")                      # the cut is real: the control machine cannot reach it either
        r = kontur("replication", "status", "--lab", "-i", str(REPLICATION_REGION))
        rec["status_cli_during"] = r
        rec["cut_seconds"] = time.monotonic() - t_cut
    finally:
        heal_all(TSAMI)
    t_heal = time.monotonic()

    # the backlog drains; the LAMI's own link is cut for a while in the middle of it
    d0 = lami0["delivered"]
    try:
        st = wait_for(lambda: (s := lami.status())["delivered"] >= d0 + 10 and s, 240, interval=0.2,
                      message="all-lami to deliver 10 studies after the heal")
        ops.set_link(ALL, False)
        rec["delivered_at_second_cut"] = st["delivered"] - d0
        rec["ten_delivered_after_heal"] = time.monotonic() - t_heal
        time.sleep(8)                                    # the length of the second cut
    finally:
        heal_all(ALL)
    rec["drain"] = wait_delivered(tsami, studies, timeout=300, what="the 50 studies after the outage")
    rec["recovery_seconds"] = time.monotonic() - t_heal
    wait_delivered(tsami, [g1, g2], timeout=240, what="G2 and G1's late instance")
    rec["gw_after"] = wait_for(lambda: not gw.holds(g1) and not gw.holds(g2) and gw.status(), 120, interval=0.5,
                               message="the gateway to delete G1's late instance and G2")
    rec["lami_after"] = wait_for(lambda: (s := lami.status())["queue_depth"] == 0 and s, 60, interval=0.5,
                                 message="all-lami's queue to empty")
    rec.update(studies=studies, g1=g1, g2=g2, late=late, lami_before=lami0)
    figures.append(f"outage: 50 studies sent in {rec['sent_during_cut']:.1f} s with the TsAMI cut off; cut for "
        f"{rec['cut_seconds']:.0f} s (until both nodes saw the link fail); after the heal 10 studies were delivered "
        f"{rec['ten_delivered_after_heal']:.1f} s later (backoff), all 50 studies were at the TsAMI "
        f"{rec['recovery_seconds']:.1f} s after the heal, with the LAMI's own link cut for 8 s after "
        f"{rec['delivered_at_second_cut']} deliveries")
    return rec


def test_link_cut_for_50_studies_then_healed_every_instance_arrives_exactly_once(outage, nodes):
    during = outage["lami_during"]
    assert during["queue_depth"] == OUTAGE_STUDIES
    assert during["delivered"] == outage["lami_before"]["delivered"], "delivered while the TsAMI was cut off?"
    assert during["link"]["last_error"] and during["oldest_pending_age_seconds"] > 0
    assert outage["status_cli_during"].rc == 1, outage["status_cli_during"].out   # on-call sees it
    assert "all-lami" in outage["status_cli_during"].out

    tsami = nodes[TSAMI]
    assert assert_exactly_once(tsami, outage["studies"]) == 3 * OUTAGE_STUDIES
    after = outage["lami_after"]
    assert (after["queue_depth"], after["failed"], after["parked"]) == (0, 0, 0)
    assert after["delivered"] == outage["lami_before"]["delivered"] + OUTAGE_STUDIES
    assert after["link"]["up"] is True


def test_gateway_keeps_accepting_while_cut_off_and_deletes_only_what_was_verified(outage, nodes):
    g1, g2, late = outage["g1"], outage["g2"], outage["late"]
    # before the outage: G1 deleted from the gateway only once the TsAMI held all of it
    assert len(outage["g1_at_tsami_after_delete"]) == 2
    # during the outage: nothing unverified deleted, new images accepted
    assert outage["gw_holds_g2"] == g2.sop_uids
    assert outage["gw_holds_g1"] == {late[0].sop_uid}, "the gateway must keep G1's late instance until verified"
    assert outage["gw_during"]["queue_depth"] >= 2
    # after: everything at the TsAMI exactly once, nothing left on the gateway
    assert assert_exactly_once(nodes[TSAMI], [g1, g2]) == 6
    gw = outage["gw_after"]
    assert (gw["queue_depth"], gw["deletions_pending"], gw["parked"]) == (0, 0, 0)


# --- faults on the LAMI host mid-transfer -------------------------------------------------------

def _in_flight(lami: Node, study: Study, sent: int):
    st = lami.status()
    f = st.get("in_flight")
    return f if f and f["study"] == study.orthanc_id() and f["instances_sent"] >= sent else None


def test_kill_9_of_the_lamis_orthanc_mid_transfer_loses_nothing(deployed, nodes, tmp_path, figures):
    """A 6 MB study is on the wire (8 Mbit/s) and another has just arrived
    (not yet stable) when Orthanc is killed; systemd starts it again."""
    tsami, lami = nodes[TSAMI], nodes[ALL]
    big = make_study(24, pixel_bytes=250_000)
    fresh = make_study(3)
    send(CT, [big], tmp_path / "big")
    wait_for(lambda: _in_flight(lami, big, 4), 120, interval=0.1, message="the big study on the wire")
    send(CT, [fresh], tmp_path / "fresh")
    pid = lami.main_pid(deployed)
    p = on_host(deployed, ALL, f"kill -9 {pid}")
    assert p.returncode == 0, p.stderr
    t_kill = time.monotonic()
    assert tsami.holds(big) < big.sop_uids, "the study was already complete: the kill was not mid-transfer"
    new_pid = wait_for(lambda: (n := lami.main_pid(deployed)) not in (0, pid) and n, 120, interval=0.5,
                       message="systemd to start Orthanc again")
    wait_for(lambda: lami.status()["enabled"], 120, interval=0.5, message="the plugin after the restart")
    took = wait_delivered(tsami, [big, fresh], timeout=300, what="both studies after kill -9")
    figures.append(f"kill -9: Orthanc {pid} -> {new_pid}; both studies at the TsAMI "
        f"{time.monotonic() - t_kill:.1f} s after the kill ({took:.1f} s after the plugin answered again; "
        "the fresh study's lost stable event is made up by the quiet-period sweep)")
    assert assert_exactly_once(tsami, [big, fresh]) == 27
    st = wait_for(lambda: (s := lami.status())["queue_depth"] == 0 and s, 60, interval=0.5,
                  message="all-lami's queue to empty")
    assert (st["failed"], st["parked"]) == (0, 0)


def test_reboot_of_the_lami_host_mid_transfer_loses_nothing(deployed, nodes, tmp_path, figures):
    tsami, lami = nodes[TSAMI], nodes[ALL]
    big = make_study(24, pixel_bytes=250_000)
    fresh = make_study(3)
    booted = on_host(deployed, ALL, "ps -o lstart= -p 1").stdout.strip()
    send(CT, [big], tmp_path / "big")
    wait_for(lambda: _in_flight(lami, big, 4), 120, interval=0.1, message="the big study on the wire")
    send(CT, [fresh], tmp_path / "fresh")
    t0 = time.monotonic()
    ops.reboot(ALL)
    t_up = time.monotonic() - t0
    assert tsami.holds(big) < big.sop_uids, "the study was already complete: the reboot was not mid-transfer"
    assert on_host(deployed, ALL, "ps -o lstart= -p 1").stdout.strip() != booted
    took = wait_delivered(tsami, [big, fresh], timeout=300, what="both studies after the reboot")
    figures.append(f"reboot: host back (sshd) in {t_up:.1f} s; both studies at the TsAMI {t_up + took:.1f} s after "
        "the reboot began")
    assert assert_exactly_once(tsami, [big, fresh]) == 27
    p = on_host(deployed, ALL, "systemctl is-active orthanc.service postgresql@15-main.service nginx.service")
    assert p.stdout.split() == ["active"] * 3, p.stdout
    st = wait_for(lambda: (s := lami.status())["queue_depth"] == 0 and s, 60, interval=0.5,
                  message="all-lami's queue to empty")
    assert (st["failed"], st["parked"]) == (0, 0)
