"""Fixtures for the replication plugin against real Orthanc processes on loopback.

A "TsAMI" Orthanc (DICOMweb plugin, a peer account, a Lua filter that refuses
instances of PatientID REFUSED, as a site's filters would) and "LAMI"/gateway
Orthancs loading kontur's entry script from ``plugins/`` exactly as deployed
(``PythonScript`` + ``"Kontur": {"PolicyFile"}``), with a policy file built
like the renderer's.  Every process is stopped by PID in teardown.
"""
from __future__ import annotations

import pytest

from kontur.testing.orthanc import OrthancProcess, orthanc_available
from kontur.testing.replication import REFUSE_LUA, Node, new_node, tsami_config


@pytest.fixture(autouse=True)
def _orthanc_installed(request):
    """These tests exist to run inside Debian's Orthanc: without it they fail
    with the fix, never skip (./run test installs it)."""
    if "orthanc" in request.keywords and not orthanc_available():
        pytest.fail("Debian's /usr/sbin/Orthanc is not installed: run ./run setup (apt-get install orthanc orthanc-python)")


@pytest.fixture
def processes():
    started: list[OrthancProcess] = []
    yield started
    for p in reversed(started):
        p.stop()


@pytest.fixture
def tsami(tmp_path, processes) -> OrthancProcess:
    lua = tmp_path / "refuse.lua"
    lua.write_text(REFUSE_LUA)
    o = OrthancProcess("tsami", tsami_config(lua, tmp_path / "tsami-state"), tmp_path / "tsami", aet="TSAMI")
    processes.append(o)
    return o.start()


@pytest.fixture
def make_node(tmp_path, processes, tsami):
    """make_node(mode=..., gateway=..., windows=..., stable_age=..., upstream_url=..., start=True)"""
    count = {"n": 0}

    def factory(*, stable_age: int = 2, upstream_url: str | None = None, start: bool = True,
                extra_config: dict | None = None, **policy_kw) -> Node:
        count["n"] += 1
        name = f"lami{count['n']}"
        return new_node(tmp_path / name, name, upstream_url or tsami.url, processes, stable_age=stable_age,
                        start=start, extra_config=extra_config, **policy_kw)

    return factory


