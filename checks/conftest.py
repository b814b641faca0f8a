"""Read-only health and compliance checks of deployed nodes (R15).

The checks read the same inventory the deploy used and compare each host with
what kontur renders for it.  Run them with ``kontur check`` (or plain
``pytest checks/ --inventory FILE [--lab]``).  Nothing here writes to a host;
a check that must write (a test C-STORE) is marked ``writes`` and refused
outside the lab.

Every control has a stable ID, a reference and an impact, like an InSpec
control: ``@control("KONTUR-SEC-01", ref="…", impact=1.0)``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import testinfra

from kontur.inventory import load
from kontur.render import render_node
from kontur.secrets import SecretStore, default_dir


def pytest_addoption(parser):
    g = parser.getgroup("kontur")
    g.addoption("--inventory", default=os.environ.get("KONTUR_INVENTORY"), help="region inventory (YAML)")
    g.addoption("--lab", action="store_true", help="check the running lab's hosts")
    g.addoption("--kontur-node", action="append", default=[], help="check only this node (repeatable)")
    g.addoption("--secrets", default=None, help="secrets store (read only)")
    g.addoption("--kontur-ssh-config", default=None, help="ssh_config for reaching production nodes")


def pytest_configure(config):
    config.addinivalue_line("markers", "control(id, ref, impact): a compliance control")
    config.addinivalue_line("markers", "roles(*roles): run only on nodes with these roles")
    config.addinivalue_line("markers", "writes: changes state on the host; refused outside the lab")


class Target:
    """The region and how to reach its hosts, built once per run."""

    def __init__(self, config):
        self.lab = config.getoption("--lab")
        region = load(config.getoption("--inventory"))
        self.state = None
        if self.lab:
            from kontur.lab.state import lab_region, require_state
            self.state = require_state()
            region = lab_region(region, self.state)
        self.region = region
        only = config.getoption("--kontur-node")
        self.nodes = [n for n in region.nodes if not only or n in only]
        secrets = config.getoption("--secrets")
        self.store = SecretStore(Path(secrets) if secrets else default_dir(region.region.name, lab=self.lab),
                                 create=False)
        self.ssh_config = config.getoption("--kontur-ssh-config")
        self._hosts = {}
        self._bundles = {}

    def host(self, node: str):
        if node not in self._hosts:
            addr = self.region.nodes[node].address
            if self.state is not None:
                cfg = tempfile.NamedTemporaryFile("w", prefix="kontur-ssh-", suffix=".conf", delete=False)
                cfg.write(f"Host *\n  User {self.state.ssh_user}\n  IdentityFile {self.state.ssh_key}\n"
                          f"  IdentitiesOnly yes\n  UserKnownHostsFile {self.state.known_hosts}\n"
                          "  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 5\n"
                          "  ControlMaster auto\n  ControlPath /tmp/kontur-check-%C\n  ControlPersist 60\n")
                cfg.close()
                self._hosts[node] = testinfra.get_host(f"ssh://{addr}", ssh_config=cfg.name)
            else:
                self._hosts[node] = testinfra.get_host(f"ssh://root@{addr}", ssh_config=self.ssh_config)
        return self._hosts[node]

    def bundle(self, node: str):
        if node not in self._bundles:
            self._bundles[node] = render_node(self.region, node, self.store)
        return self._bundles[node]


def pytest_generate_tests(metafunc):
    if "node" not in metafunc.fixturenames:
        return
    target = _target(metafunc.config)
    marker = metafunc.definition.get_closest_marker("roles")
    roles = set(marker.args) if marker else None
    nodes = [n for n in target.nodes if roles is None or target.region.nodes[n].role.value in roles]
    metafunc.parametrize("node", nodes, ids=nodes)


#: a control's pytest node ID -> the name it is reported by
_CONTROL_NAMES: dict[str, str] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    """Before the terminal and the JUnit writer see it: the control's own name."""
    name = _CONTROL_NAMES.get(report.nodeid)
    if name:
        report.nodeid = name


def pytest_collection_modifyitems(config, items):
    """A control is reported by its ID and node (``KONTUR-SEC-01[onco-lami]``), in the
    console and in the JUnit report, with its impact and reference as properties."""
    for item in items:
        m = item.get_closest_marker("control")
        if m is None:
            continue
        cid = m.args[0]
        node = getattr(item, "callspec", None) and item.callspec.params.get("node")
        _CONTROL_NAMES[item.nodeid] = f"kontur::{cid}[{node}]" if node else f"kontur::{cid}"
        item.user_properties += [("control", cid), ("impact", str(m.kwargs.get("impact", ""))),
                                 ("reference", str(m.kwargs.get("ref", ""))), ("check", item.originalname)]


def _target(config) -> Target:
    if not hasattr(config, "_kontur_target"):
        config._kontur_target = Target(config)
    return config._kontur_target


@pytest.fixture(scope="session")
def target(request) -> Target:
    return _target(request.config)


@pytest.fixture
def host(target, node):
    return target.host(node)


@pytest.fixture
def bundle(target, node):
    return target.bundle(node)


@pytest.fixture(autouse=True)
def _refuse_writes_outside_lab(request, target):
    if request.node.get_closest_marker("writes") and not target.lab:
        pytest.fail("this check writes to the host and runs only in the lab (--lab)")
