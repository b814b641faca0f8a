# SPDX-License-Identifier: AGPL-3.0-or-later
"""What ``kontur check`` (on-call: the region's health in seconds) runs, and
where ``kontur audit``'s controls are (checks/); the commands are in
``kontur/cli/check.py``.

``check`` asks every node at once, one SSH round trip each
(``kontur/scripts/health_probe.py``) plus HTTPS from the control machine,
with one timeout per node; :mod:`kontur.health` judges the answers.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import subprocess
import time
from pathlib import Path

from . import health, reach, target
from .errors import InvalidInput
from .files import atomic_write
from .paths import ROOT as REPO_ROOT

CHECKS = REPO_ROOT / "checks"
PROBE = Path(__file__).resolve().parent / "scripts" / "health_probe.py"


def _known_nodes(region, nodes) -> list[str]:
    unknown = [n for n in nodes if n not in region.nodes]
    if unknown:
        raise InvalidInput(f"--node {', '.join(unknown)}: not in the inventory; known: {', '.join(region.nodes)}")
    return [n for n in region.nodes if not nodes or n in nodes]


class Target:
    """What a check run needs of where it acts (:mod:`kontur.target`: the
    inventory's or the running lab's addresses, SSH settings, secrets store),
    with the operator's certificate made once."""

    def __init__(self, region, lab: bool, secrets_dir: str | None):
        from .pki import operator_cert
        self.where = target.resolve(region, lab=lab, secrets_dir=secrets_dir)
        self.lab = lab
        self.region = self.where.region
        self.store = self.where.existing_store()
        # made once, here: the nodes' threads only read it
        self.operator = operator_cert(self.store, region.region.title)

    def ssh(self, node: str) -> reach.Ssh:
        """How the check's probe reaches ``node`` (X25519 key exchange: reach.CHECK_KEX)."""
        return dataclasses.replace(self.where.ssh(node), kex=reach.CHECK_KEX)

    def render_node(self, node: str):
        return self.where.render_node(node, self.store)

    def https_client(self, node: str, timeout: float):
        from .nodeapi import SERVICE_USER, NodeClient
        spec = self.region.nodes[node]
        ca, cert, key = self.operator
        password = self.store.get(f"nodes/{node}/{SERVICE_USER}")
        url = f"https://{spec.address}:{self.region.ports(node).https}/"
        return NodeClient(url, SERVICE_USER if password else None, password, str(ca), str(cert), str(key),
                          timeout=timeout, name=node)


def _probe(target: Target, node: str, bundle, timeout: float) -> tuple[dict | None, str | None]:
    params = health.probe_params(target.region, node, bundle)
    script = PROBE.read_text() + f"\nmain(json.loads({json.dumps(json.dumps(params))}))\n"
    ssh = target.ssh(node)
    # -S: no site-packages to scan (the probe is standard library only)
    argv = ssh.argv(target.region.nodes[node].address, "python3", "-S", "-")
    try:
        p = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {timeout:g} s"
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return None, f"{why[:200]} (ssh {ssh.user}@{target.region.nodes[node].address}:{ssh.port})"
    try:
        return json.loads(p.stdout), None
    except ValueError:
        return None, f"the probe answered no JSON: {p.stdout[-200:]!r}"


def _https(target: Target, node: str, timeout: float) -> str | None:
    from .nodeapi import NodeError
    archive = target.region.nodes[node].role.value in ("tsami", "lami", "gateway", "research")
    try:
        target.https_client(node, timeout).get("system")
    except NodeError as exc:
        if exc.unreachable:
            return str(exc).split(": ", 1)[-1]
        if archive:         # nginx answered, what is behind it did not (its page is no message)
            return f"GET /system through nginx answered HTTP {exc.status}"
    return None


def probe_node(target: Target, node: str, bundle, timeout: float) -> health.NodeHealth:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        probe = pool.submit(_probe, target, node, bundle, timeout)
        https = pool.submit(_https, target, node, min(timeout, 10.0))
        (answer, ssh_error), https_error = probe.result(), https.result()
    return health.judge(target.region, node, bundle, answer, ssh_error=ssh_error, https_error=https_error,
                        seconds=time.monotonic() - started)


def check_nodes(run: Target, names: list[str], timeout: float) -> list[health.NodeHealth]:
    """Every node of ``names`` asked at once (one SSH round trip and HTTPS each), judged."""
    # rendered here, one after the other (rendering may write a missing key to the store)
    bundles = {n: run.render_node(n) for n in names}
    with concurrent.futures.ThreadPoolExecutor(max(1, min(32, len(names)))) as pool:
        return list(pool.map(lambda n: probe_node(run, n, bundles[n], timeout), names))


def write_atomically(path: Path, text: str) -> None:
    """node_exporter's textfile collector must never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), 0o644)
