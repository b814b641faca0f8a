"""Read-only health and compliance checks of deployed nodes (R15).

The checks read the same inventory the deploy used and compare each host with
what kontur renders for it.  Run them with ``kontur check`` (or plain
``pytest checks/ --inventory FILE [--lab]``).  Nothing here writes to a host;
a check that must write (a test C-STORE) is marked ``writes`` and skipped
outside the lab.

Every control has a stable ID, a reference and an impact, like an InSpec
control: ``@control("KONTUR-SEC-01", ref="…", impact=1.0)``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import pytest
import testinfra

from kontur.inventory import load
from kontur.target import resolve as resolve_target
from remote import CREDENTIALS, PLUGINS


def pytest_addoption(parser):
    g = parser.getgroup("kontur")
    g.addoption("--inventory", default=os.environ.get("KONTUR_INVENTORY"), help="region inventory (YAML)")
    g.addoption("--lab", action="store_true", help="check the running lab's hosts")
    g.addoption("--kontur-node", action="append", default=[], help="check only this node (repeatable)")
    g.addoption("--secrets", default=None, help="secrets store (read only)")
    g.addoption("--kontur-ssh-config", default=None, help="ssh_config for reaching production nodes")
    g.addoption("--kontur-min-age", type=float, default=None,
                help="REG-04: a study older than this many seconds must be at the TsAMI "
                     "(default: its hospital's deadline plus StableAge)")
    g.addoption("--kontur-results", default=None, help="write each control's outcome and evidence (JSON lines)")


def pytest_configure(config):
    _CONFIG["config"] = config
    config.addinivalue_line("markers", "control(id, ref, impact): a compliance control")
    config.addinivalue_line("markers", "roles(*roles): run only on nodes with these roles")
    config.addinivalue_line("markers", "writes: changes state on the host; refused outside the lab")


class Target:
    """The region and how to reach its hosts, built once per run.

    SSH: the lab's settings with ``--lab``; else testinfra's own options when
    given (``--hosts``, ``--ssh-config``, ``--ssh-identity-file``, ``--sudo``),
    else kontur's (:mod:`kontur.reach`: ``KONTUR_SSH_*``, as deploy)."""

    def __init__(self, config):
        self.lab = config.getoption("--lab")
        # the production region or the running lab: kontur.target decides (as for deploy and check)
        self.where = resolve_target(load(config.getoption("--inventory")), lab=self.lab,
                                    secrets_dir=config.getoption("--secrets"))
        region = self.region = self.where.region
        only = set(config.getoption("--kontur-node"))
        # testinfra's --hosts: node names or addresses, optionally ssh://user@ (the user is honoured)
        self.users: dict[str, str] = {}
        raw = config.getoption("hosts", None) or []
        hosts = [h.strip() for spec in ([raw] if isinstance(raw, str) else raw) for h in spec.split(",") if h.strip()]
        for h in hosts:
            bare = h.split("://", 1)[-1]
            user, _, name = bare.rpartition("@")
            name = name.split(":")[0]
            node = name if name in region.nodes else next(
                (n for n, s in region.nodes.items() if s.address == name), None)
            if node is None:
                raise pytest.UsageError(f"--hosts {h}: neither a node nor an address of the inventory")
            only.add(node)
            if user:
                self.users[node] = user
        self.nodes = [n for n in region.nodes if not only or n in only]
        self.store = self.where.store(create=False)
        self.ssh_config = config.getoption("--kontur-ssh-config") or config.getoption("ssh_config", None)
        self.identity = config.getoption("ssh_identity_file", None)
        self.sudo = bool(config.getoption("sudo", False))
        self._hosts = {}
        self._bundles = {}
        #: where the nodes keep Orthanc's users (a test points it at a loopback Orthanc's)
        self.credentials = CREDENTIALS
        self.plugins = PLUGINS
        self.min_age = config.getoption("--kontur-min-age")

    def host(self, node: str):
        if node not in self._hosts:
            addr = self.region.nodes[node].address
            ssh_config = self.ssh_config
            ssh = self.where.ssh(node)
            if ssh_config is None:
                cfg = tempfile.NamedTemporaryFile("w", prefix="kontur-ssh-", suffix=".conf", delete=False)
                cfg.write(ssh.config_text())
                cfg.close()
                ssh_config = cfg.name
            user = self.users.get(node) or (None if self.ssh_config else ssh.user)
            url = f"ssh://{user + '@' if user else ''}{addr}:{ssh.port}"
            self._hosts[node] = testinfra.get_host(url, ssh_config=ssh_config, ssh_identity_file=self.identity,
                                                   sudo=self.sudo or (ssh.sudo and ssh.user != "root"))
            _record_commands(self._hosts[node])
        return self._hosts[node]

    def auditor(self):
        """The auditor's own machine (testinfra's local backend), for probes sent from the lab's
        namespaces; its commands are evidence like a node's."""
        if "" not in self._hosts:
            self._hosts[""] = testinfra.get_host("local://")
            _record_commands(self._hosts[""])
        return self._hosts[""]

    def bundle(self, node: str):
        if node not in self._bundles:
            self._bundles[node] = self.where.render_node(node, self.store)
        return self._bundles[node]

    def secrets(self) -> list[str]:
        """Every secret the store holds: never in a report (a safety net under the controls' own care)."""
        values = []
        for key in self.store.keys():
            v = self.store.get(key)
            if v and len(v) >= 8:
                values.append(v)
        return values


#: the commands the running control sent to a host, with their answers (the report's evidence)
_EVIDENCE: list[dict] = []


def _record_commands(host) -> None:
    backend = host.backend
    run = backend.run

    def recorded(command, *args, **kwargs):
        started = time.time()
        result = run(command, *args, **kwargs)
        cmd = getattr(result, "command", None) or command
        if isinstance(cmd, bytes):
            cmd = cmd.decode("utf-8", "replace")
        _EVIDENCE.append({"command": str(cmd), "rc": result.rc,
                          "stdout": result.stdout[-2000:], "stderr": result.stderr[-1000:],
                          "time": round(started, 1)})
        return result
    backend.run = recorded


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
        _write_result(report, name)
        report.nodeid = name


_RESULTS: dict[str, dict] = {}


def _write_result(report, name: str) -> None:
    """``--kontur-results``: one JSON line per control and node (its outcome, message and evidence)."""
    config = _CONFIG.get("config")
    path = config.getoption("--kontur-results") if config else None
    if not path or (report.when != "call" and report.passed):
        return
    meta = _META.get(report.nodeid, {})
    message = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed or report.skipped:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)[-1500:]
        # the finding, without pytest's rewriting of the assert below it
        message = message.split("\nassert ")[0]
    outcome = "error" if report.failed and report.when != "call" else report.outcome
    evidence = list(_EVIDENCE)
    _EVIDENCE.clear()
    line = {"name": name.removeprefix("kontur::"), **meta, "outcome": outcome, "message": message,
            "duration": round(report.duration, 3), "time": round(time.time(), 1), "evidence": evidence}
    target = _CONFIG.get("target")
    text = json.dumps(line, ensure_ascii=False)
    for secret in (target.secrets() if target else []):
        text = text.replace(json.dumps(secret)[1:-1], "[secret]")
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + "\n")


_CONFIG: dict = {}
_META: dict[str, dict] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _EVIDENCE.clear()


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
        doc = (item.function.__doc__ or item.originalname.removeprefix("test_").replace("_", " ")).strip()
        _META[item.nodeid] = {"control": cid, "node": node, "impact": m.kwargs.get("impact"),
                              "reference": m.kwargs.get("ref"), "title": doc.splitlines()[0], "check": item.originalname}
        item.user_properties += [("control", cid), ("impact", str(m.kwargs.get("impact", ""))),
                                 ("reference", str(m.kwargs.get("ref", ""))), ("check", item.originalname)]


def _target(config) -> Target:
    if not hasattr(config, "_kontur_target"):
        config._kontur_target = Target(config)
        _CONFIG.update(config=config, target=config._kontur_target)
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
    """A probe that could write to an archive (a test C-STORE) runs only in the lab: an auditor's
    production run reports it skipped, never a test instance in a hospital's archive."""
    if request.node.get_closest_marker("writes") and not target.lab:
        pytest.skip("this probe writes to the archive if the node lets it: run in the lab only (--lab)")
