# SPDX-License-Identifier: AGPL-3.0-or-later
"""The test harness's Orthanc processes: each test talks to the Orthanc it started, never to another one
that happens to answer on the same port.  (A CI run once had its "TsAMI" fail to bind the port its
"LAMI" already held while the LAMI answered ``/system`` for it: the audit control then looked at one
archive twice and found nothing missing.)"""
from __future__ import annotations

import pytest

from kontur.testing import orthanc as harness
from kontur.testing.orthanc import OrthancProcess

pytestmark = pytest.mark.orthanc


def test_ports_handed_out_in_one_run_are_never_handed_out_again(monkeypatch):
    """The kernel may give the same ephemeral port to two binds in a row once the first socket is closed;
    the harness must not give it to two processes."""
    answers = iter([40001, 40001, 40002, 40001, 40003])

    class FakeSocket:
        def __init__(self, *a):
            self.port = next(answers)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def bind(self, addr):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(harness, "_HANDED_OUT", set())
    monkeypatch.setattr(harness.socket, "socket", FakeSocket)
    assert [harness.free_port(), harness.free_port(), harness.free_port()] == [40001, 40002, 40003]


def test_an_orthanc_that_cannot_bind_is_not_taken_for_the_one_answering_on_its_port(tmp_path, processes):
    first = OrthancProcess("first", {}, tmp_path / "first", password="same")
    second = OrthancProcess("second", {}, tmp_path / "second", password="same")
    processes += [first, second]
    first.start()
    second.http_port = first.http_port  # as if free_port had handed the same port out twice
    second.start()
    assert second.http_port != first.http_port
    assert second.get("/system")["Name"] == "second"
    assert first.get("/system")["Name"] == "first"
