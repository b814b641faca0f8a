# SPDX-License-Identifier: AGPL-3.0-or-later
"""The whole example region deploys in the lab: eight nodes of every role,
from clean hosts; a re-deploy changes nothing; every archive answers its
inventory modalities; the reference centre's users reach the TsAMI through
the centre's nginx (which presents the node's regional client certificate)."""
from __future__ import annotations

import subprocess

import pytest

from kontur.inventory import EXAMPLE_INVENTORY, load
from kontur.lab.state import lab_region
from kontur.pki import operator_cert
from kontur.secrets import SecretStore, default_dir

from deploy_helpers import deploy, in_netns

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployed(example_lab):
    return deploy(EXAMPLE_INVENTORY)


@pytest.fixture(scope="module")
def region(example_lab):
    return lab_region(load(EXAMPLE_INVENTORY), example_lab)


def test_example_region_deploys_and_redeploys_without_changes(example_lab, deployed):
    assert deployed.rc == 0, deployed.out
    assert (deployed.hosts, deployed.failed) == (8, 0), deployed.out
    again = deploy(EXAMPLE_INVENTORY)
    assert again.rc == 0 and again.changed == 0, again.out


def test_every_archive_answers_its_modalities(example_lab, deployed, region):
    for h in region.hospitals.values():
        if not h.node or region.nodes[h.node].role.value == "reference":
            continue
        spec = region.nodes[h.node]
        for m in h.modalities:
            p = in_netns(example_lab.modalities[m.aet].netns,
                         ["timeout", "20", "echoscu", "-to", "3", "-aet", m.aet, "-aec", spec.aet,
                          spec.address, str(region.ports(h.node).dicom)])
            assert p.returncode == 0, f"C-ECHO {m.aet} -> {spec.aet}: {p.stdout}"


def test_reference_centre_users_reach_the_tsami_through_its_nginx(example_lab, deployed, region):
    store = SecretStore(default_dir(example_lab.region_name, lab=True))
    ca, _crt, _key = operator_cert(store, region.region.title)
    ref = next(n for n, s in region.nodes.items() if s.role.value == "reference")
    spec = region.nodes[ref]
    user = next(u for u in region.users_of(spec.reads_from) if ref in (u.nodes or []))
    url = f"https://{spec.address}:{region.ports(ref).https}/system"

    def code(*auth: str) -> str:
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                            "--cacert", str(ca), *auth, url], stdout=subprocess.PIPE, text=True, timeout=30)
        return p.stdout.strip()

    assert code("-u", f"{user.login}:{store.password('users/' + user.login)}") == "200"
    assert code("-u", f"{user.login}:wrong") == "401"
    assert code("-u", "orthanc:orthanc") == "401"
