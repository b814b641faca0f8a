# SPDX-License-Identifier: AGPL-3.0-or-later
"""The research exporter on a collection point (issue 16): what the node
needs to send its feeds' de-identified copies.

* ``/etc/kontur/research.json`` (0600, orthanc): the local Orthanc's service
  account and the region's research key (``research/key`` in the secrets
  store, made once); the feeds themselves are in the policy file
* ``kontur-research.service`` (oneshot, as orthanc) and its timer (every
  minute): ``python3 -m kontur_plugins.research run`` from the deployed
  plugins, the key map in ``/var/lib/kontur/research``

The research node gets nothing of this: its only part is a peer account that
may store (``orthanc.research_exporters``).
"""
from __future__ import annotations

from ..model import Region
from ..secrets import SecretStore
from . import orthanc as oc
from .bundle import Bundle, Directory, RenderedFile

SERVICE = "kontur-research.service"
TIMER = "kontur-research.timer"
SECRETS_FILE = "/etc/kontur/research.json"
STATE_DIR = "/var/lib/kontur/research"
KEYMAP = f"{STATE_DIR}/keymap.sqlite"
KEY = "research/key"
#: every minute: a study stable at the TsAMI reaches the research node within about StableAge + a minute
INTERVAL_SECONDS = 60


def exports(region: Region, node: str) -> bool:
    return bool(region.research_feeds_at(node))


def service_unit() -> bytes:
    return f"""# kontur: research feeds (issue 16): de-identified copies of the selected studies to the research node
[Unit]
Description=kontur research feeds (de-identified copies to the research node)
After=orthanc.service
Requires=orthanc.service

[Service]
Type=oneshot
User=orthanc
Group=orthanc
Environment=PYTHONPATH={oc.KONTUR_PLUGIN_DIR}
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m kontur_plugins.research run --policy {oc.POLICY_FILE} --secrets {SECRETS_FILE} --keymap {KEYMAP}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={STATE_DIR}
""".encode()


def timer_unit() -> bytes:
    return f"""# kontur: research feeds, every {INTERVAL_SECONDS} s
[Unit]
Description=kontur research feeds, every {INTERVAL_SECONDS} s

[Timer]
OnActiveSec=10
OnUnitInactiveSec={INTERVAL_SECONDS}
AccuracySec=5

[Install]
WantedBy=timers.target
""".encode()


def add(region: Region, node: str, bundle: Bundle, store: SecretStore) -> list[str]:
    """Put the exporter into ``bundle``; returns its timer (to start after Orthanc)."""
    if not exports(region, node):
        return []
    from . import as_json  # noqa: PLC0415 - the package's one JSON writer
    secrets = {
        "archive": {"url": f"http://127.0.0.1:{region.ports(node).http}", "username": oc.SERVICE_USER,
                    "password": store.password(f"nodes/{node}/{oc.SERVICE_USER}")},
        "key": store.password(KEY, 32),
    }
    bundle.files += [
        RenderedFile(SECRETS_FILE, as_json(secrets), "0600", "orthanc", "orthanc", secret=True),
        RenderedFile(f"/etc/systemd/system/{SERVICE}", service_unit(), "0644"),
        RenderedFile(f"/etc/systemd/system/{TIMER}", timer_unit(), "0644", restarts=(TIMER,)),
    ]
    bundle.directories.append(Directory(STATE_DIR, "0700", "orthanc", "orthanc"))
    bundle.facts["research"] = {"timer": TIMER, "service": SERVICE, "keymap": KEYMAP, "secrets": SECRETS_FILE,
                                "feeds": sorted(region.research_feeds_at(node))}
    return [TIMER]
