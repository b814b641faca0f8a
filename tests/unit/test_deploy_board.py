# SPDX-License-Identifier: AGPL-3.0-or-later
"""`kontur deploy`'s live board: the runner's lines and host progress drawn on
kontur.progress.Board (a row per host on a terminal; the plain lines when piped)."""
from __future__ import annotations

import io

from rich.console import Console

from kontur.cli.deploy import board_callbacks
from kontur.deploy import HostProgress
from kontur.progress import Board


def _consoles(terminal: bool):
    o, e = io.StringIO(), io.StringIO()
    return (o, e, Console(file=o, force_terminal=terminal, width=100, color_system=None),
            Console(file=e, force_terminal=False, width=100))


def _screen(board: Board) -> str:
    c = Console(file=io.StringIO(), width=100, color_system=None)
    c.print(board.render())
    return c.file.getvalue()


def test_piped_the_deploy_prints_every_line_as_the_runner_says_it():
    o, e, out, err = _consoles(terminal=False)
    board = Board([], out=out, err=err, title="deploy")
    emit, on_host = board_callbacks(board)
    with board:
        emit("connecting to 2 host(s)")
        on_host(HostProgress("tsami", "execute", "Orthanc: config", 1, 0.5))
        emit("tsami: Orthanc: config", "change")
        emit("tsami: done, 1 changed (0.5 s)")
        emit("onco-lami: FAILED at nginx: config:", "failure")
        on_host(HostProgress("onco-lami", "failed", "nginx: config", 0, 0.2))
    assert o.getvalue().splitlines() == ["connecting to 2 host(s)", "tsami: Orthanc: config",
                                         "tsami: done, 1 changed (0.5 s)"]
    assert e.getvalue().splitlines() == ["onco-lami: FAILED at nginx: config:"]


def test_on_a_terminal_a_row_per_host_shows_its_step_count_and_state():
    o, e, out, err = _consoles(terminal=True)
    board = Board([], out=out, err=err, title="deploy")
    assert board.live
    emit, on_host = board_callbacks(board)
    with board:
        on_host(HostProgress("tsami", "connect"))
        on_host(HostProgress("onco-lami", "connect"))
        on_host(HostProgress("rural-gw", "connect"))
        on_host(HostProgress("tsami", "execute", "Orthanc: config", 3, 1.0))
        emit("tsami: Orthanc: config", "change")         # the row says it; no line
        running = _screen(board)
        assert "Orthanc: config" in running and "running" in running
        on_host(HostProgress("tsami", "done", None, 3, 2.0))
        on_host(HostProgress("onco-lami", "failed", "nginx: config", 1, 0.2))
        emit("onco-lami: FAILED at nginx: config:", "failure")
        on_host(HostProgress("rural-gw", "not started"))
        assert board.states() == {"tsami": "ok", "onco-lami": "FAILED", "rural-gw": "skipped"}
        final = _screen(board)
    assert "3 changed" in final and "at nginx: config" in final and "not started" in final
    assert "3 of 3 host(s) done" in final
    assert "tsami: Orthanc: config" not in o.getvalue()
    assert e.getvalue().splitlines() == ["onco-lami: FAILED at nginx: config:"]


def test_a_dry_runs_report_is_printed_above_the_board():
    o, e, out, err = _consoles(terminal=True)
    board = Board([], out=out, err=err, title="deploy (dry run)")
    emit, on_host = board_callbacks(board, dry_run=True)
    with board:
        emit("tsami: would change: Orthanc: config", "change")
        on_host(HostProgress("tsami", "done", None, 1, 0.3))
        final = _screen(board)
    assert "tsami: would change: Orthanc: config" in o.getvalue()
    assert "1 would change" in final


def test_quiet_prints_only_failures():
    o, e, out, err = _consoles(terminal=False)
    board = Board([], out=out, err=err, live=False)
    emit, on_host = board_callbacks(board, quiet=True)
    with board:
        emit("connecting to 1 host(s)")
        emit("tsami: done, 0 changed (0.1 s)")
        emit("tsami: FAILED at x:", "failure")
    assert o.getvalue() == ""
    assert e.getvalue().splitlines() == ["tsami: FAILED at x:"]
