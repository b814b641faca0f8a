# SPDX-License-Identifier: AGPL-3.0-or-later
"""Faults made on purpose on a deployed example region in the lab (issue 13's
Done-when), each the way it happens in a hospital, and what ``kontur check``
and ``kontur audit`` must then say about it.

Each fault is ``(node, what check must say, the control audit must fail)``;
:func:`make_all` makes them all at once (one check and one audit then see
every one of them, which keeps the lab test short)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kontur.inventory import EXAMPLE_INVENTORY
from kontur.testing.orthanc import wait_for

from deploy_helpers import in_netns, kontur, on_host, write_dicom

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "checks"))
from remote import as_service_script  # noqa: E402  (the audit's own way to ask as the service account)

#: node -> [(words the check prints for it, the audit control that fails there)]
EXPECTED = {
    "perinatal-lami": [("orthanc.service is inactive", "KONTUR-SVC-01"),
                       ("storage (/var/lib/orthanc/db) is 9", None),
                       ("full: over the critical threshold 90%", "KONTUR-DSK-01")],
    "mammo-gw": [("unreachable over SSH", None)],
    "gkb3-lami": [("gkb3-us1 is in the inventory but missing from Orthanc's configuration", "KONTUR-CFG-01"),
                  ("", "KONTUR-DCM-03")],
    "research": [("REST authenticates orthanc:orthanc", "KONTUR-SEC-03")],
    "tsami": [("HTTPS without a client certificate answered", "KONTUR-TLS-01")],
    "crb-gw": [("/etc/kontur/tls/node.crt expires in 9 day(s)", "KONTUR-TLS-02"),
               ("the link to tsami is down", None), ("1 study undelivered past the 24 h deadline", "KONTUR-REG-02")],
}


def _ok(p: subprocess.CompletedProcess, what: str) -> None:
    assert p.returncode == 0, f"{what}: {p.stdout[-500:]} {p.stderr[-500:]}"


def _python(state, node: str, code: str) -> None:
    _ok(on_host(state, node, f"python3 - <<'KONTUR'\n{code}\nKONTUR", timeout=120), f"{node}: {code[:60]}")


def orthanc_stopped_and_disk_full(state) -> None:
    """perinatal-lami: Orthanc stopped; its storage on a 4 MB filesystem 96% full."""
    _ok(on_host(state, "perinatal-lami", "systemctl stop orthanc && mount -t tmpfs -o size=4m kontur-small "
                "/var/lib/orthanc/db && dd if=/dev/zero of=/var/lib/orthanc/db/fill bs=1k count=3900 status=none"),
        "perinatal-lami: stop Orthanc, fill a small disk")


def link_cut(state) -> None:
    """mammo-gw (the mobile unit): its network link cut (``kontur lab cut``)."""
    r = kontur("lab", "cut", "mammo-gw", timeout=60)
    assert r.rc == 0, r.out


def modality_removed_by_hand(state, key: str) -> None:
    """gkb3-lami: a device deleted from Orthanc's configuration by hand, and stores from any
    AE title let in (a vendor's engineer "fixing" a device that would not send), Orthanc restarted."""
    _python(state, "gkb3-lami", f"""
import json
p = "/etc/orthanc/dicom.json"
c = json.load(open(p))
del c["DicomModalities"][{key!r}]
json.dump(c, open(p, "w"), indent=2)""")
    _ok(on_host(state, "gkb3-lami", "grep -l '\"DicomAlwaysAllowStore\": false' /etc/orthanc/*.json | "
                "xargs -r sed -i 's/\"DicomAlwaysAllowStore\": false/\"DicomAlwaysAllowStore\": true/' && "
                "grep -q '\"DicomAlwaysAllowStore\": true' /etc/orthanc/*.json"), "gkb3-lami: stores from any AE")
    _ok(on_host(state, "gkb3-lami", "systemctl restart orthanc"), "gkb3-lami: restart Orthanc")


def default_credentials_enabled(state) -> None:
    """research: Debian's orthanc:orthanc added back, Orthanc restarted."""
    _python(state, "research", """
import json
p = "/etc/orthanc/credentials.json"
c = json.load(open(p))
c["RegisteredUsers"]["orthanc"] = "orthanc"
json.dump(c, open(p, "w"), indent=2)""")
    _ok(on_host(state, "research", "systemctl restart orthanc"), "research: restart Orthanc")


def tls_switched_off(state) -> None:
    """tsami: nginx no longer asks the LAMIs for a client certificate."""
    _ok(on_host(state, "tsami", "sed -i 's/ssl_verify_client on;/ssl_verify_client off;/' "
                "/etc/nginx/sites-available/kontur.conf && systemctl reload nginx"), "tsami: TLS client checks off")


def certificate_near_expiry(state) -> None:
    """crb-gw: its node certificate replaced by one valid for 10 more days (not yet loaded by nginx)."""
    _ok(on_host(state, "crb-gw", "openssl req -x509 -newkey rsa:2048 -nodes -keyout /root/short.key "
                "-out /etc/kontur/tls/node.crt -days 10 -subj /CN=crb-gw 2>/dev/null"), "crb-gw: a 10-day certificate")


def study_undelivered_past_deadline(state, region, tmp: Path) -> None:
    """crb-gw: the TsAMI unreachable from it (its WAN link drops), a study from its CR
    pushed (``kontur replicate``, as an operator would), and the queue's clock turned
    back 25 h (the deadline is 24 h)."""
    import pydicom
    node = "crb-gw"
    tsami = region.nodes["tsami"].address
    _ok(on_host(state, node, f"nft insert rule inet kontur output ip daddr {tsami} tcp dport "
                f"{region.ports('tsami').https} reject with tcp reset"), f"{node}: cut the link to the TsAMI")
    m = region.dicom_senders(node)[0][1]
    spec = region.nodes[node]
    f = write_dicom(tmp / "late.dcm", patient="LATE^STUDY")
    p = in_netns(state.modalities[m.aet].netns, ["storescu", "-aet", m.aet, "-aec", spec.aet, spec.address,
                                                 str(region.ports(node).dicom), str(f)])
    assert p.returncode == 0, p.stdout
    uid = pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
    r = kontur("replicate", "--lab", "-i", str(EXAMPLE_INVENTORY), "--node", node, "--study", uid, timeout=120)
    assert r.rc == 0, r.out
    # until the plugin has queued it and found the link down (its status says so), then age it
    status = as_service_script(region.ports(node).http, "/kontur/replication")

    def queued_with_the_link_down():
        st = json.loads(on_host(state, node, status).stdout.partition("\n")[2] or "{}")
        return st if st.get("queue_depth") and st.get("link", {}).get("up") is False else None
    wait_for(queued_with_the_link_down, 180, interval=1.0, message=f"{node} to queue the study with its link down")
    _python(state, node, """
import sqlite3
c = sqlite3.connect("/var/lib/kontur/replication.sqlite3", timeout=30)
c.execute("UPDATE studies SET queued_at = queued_at - 25 * 3600 WHERE state = 'pending'")
c.commit()""")


def make_all(state, region, tmp: Path) -> None:
    """Every fault at once, each on its own node (in parallel: they do not touch each other)."""
    from concurrent.futures import ThreadPoolExecutor
    makers = [lambda: orthanc_stopped_and_disk_full(state), lambda: link_cut(state),
              lambda: modality_removed_by_hand(state, region.dicom_senders("gkb3-lami")[-1][1].key),
              lambda: default_credentials_enabled(state), lambda: tls_switched_off(state),
              # the same node: the study first, then the certificate
              lambda: (study_undelivered_past_deadline(state, region, tmp), certificate_near_expiry(state))]
    with ThreadPoolExecutor(len(makers)) as pool:
        for f in [pool.submit(m) for m in makers]:
            f.result()
