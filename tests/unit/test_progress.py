"""kontur.progress.Board: a live board on a terminal, the plain lines elsewhere (issue 14)."""
from __future__ import annotations

import io
import re
import threading
from pathlib import Path

from rich.console import Console

from kontur.progress import Board

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=80, highlight=False, soft_wrap=True), buf


def tty_console(width: int = 80) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=width, highlight=False, color_system="standard"), buf


def test_plain_mode_prints_exactly_the_lines_it_is_handed_and_nothing_else():
    console, buf = plain_console()
    board = Board(["onco-lami", "tsami"], out=console)
    assert board.live is False
    with board:
        board.update("tsami", step="Base: install packages")                 # no line: a plain run prints nothing
        board.update("tsami", step="Orthanc: config", changed=1, line="tsami: Orthanc: config")
        board.log("batch 1 of 1: onco-lami, tsami")
        board.done("tsami", ok=True, changed=1, line="tsami: done, 1 changed (2.0 s)")
        board.done("onco-lami", ok=False, summary="FAILED at connect")        # no line: nothing
    assert buf.getvalue() == ("tsami: Orthanc: config\n"
                              "batch 1 of 1: onco-lami, tsami\n"
                              "tsami: done, 1 changed (2.0 s)\n")
    assert not ANSI.search(buf.getvalue())
    assert board.states() == {"onco-lami": "FAILED", "tsami": "ok"}


def test_plain_mode_logs_errors_to_the_error_console():
    console, buf = plain_console()
    errors, ebuf = plain_console()
    with Board(["a"], out=console, err=errors) as board:
        board.log("a: FAILED at Orthanc:", err=True)
    assert buf.getvalue() == "" and ebuf.getvalue() == "a: FAILED at Orthanc:\n"


def test_plain_mode_text_is_never_markup():
    console, buf = plain_console()
    with Board(["[node]"], out=console) as board:
        board.update("[node]", step="[bold]x[/bold]", line="[node]: [bold]x[/bold]")
    assert buf.getvalue() == "[node]: [bold]x[/bold]\n"


def test_terminal_mode_draws_one_line_per_host_in_place_not_the_plain_lines():
    console, buf = tty_console()
    clock = Clock()
    board = Board(["onco-lami", "gkb3-lami", "tsami"], out=console, clock=clock, title="deploy")
    assert board.live is True
    with board:
        board.update("tsami", step="Orthanc: config", changed=2, line="tsami: Orthanc: config")
        clock.now += 2.5
        board.done("tsami", ok=True, summary="2 changed", line="tsami: done, 2 changed (2.5 s)")
        board.update("onco-lami", step="Base: install packages", changed=0)
        clock.now += 61
        board.done("onco-lami", ok=False, summary="at Base")
    text = buf.getvalue()
    assert ANSI.search(text)
    assert "\x1b[1A" in text or "\x1b[2K" in text          # redrawn in place: cursor up / erase line
    assert "tsami: Orthanc: config" not in text and "tsami: done" not in text
    final = text.rsplit("deploy:", 1)[-1]                  # the last drawing of the board
    plain = ANSI.sub("", final)
    assert "2 of 3 host(s) done" in plain
    lines = {h: next(ln for ln in plain.splitlines() if h in ln) for h in ("onco-lami", "gkb3-lami", "tsami")}
    assert "Orthanc: config" in lines["tsami"] and "2.5 s" in lines["tsami"] and "ok" in lines["tsami"]
    assert "Base: install packages" in lines["onco-lami"] and "1 min 01 s" in lines["onco-lami"]
    assert "FAILED" in lines["onco-lami"]
    assert "waiting" in lines["gkb3-lami"]
    assert "changed" in plain


def test_a_host_left_alone_is_skipped_not_failed():
    console, buf = tty_console()
    with Board(["a", "b"], out=console) as board:
        board.done("a", ok=False, summary="at Orthanc")
        board.done("b", ok=None, summary="not started")
    plain = ANSI.sub("", buf.getvalue()).rsplit("host(s) done", 1)[-1]
    b = next(ln for ln in plain.splitlines() if "│ b " in ln)
    assert "skipped not started" in b and "FAILED" not in b and " s " not in b     # no elapsed time
    assert board.states() == {"a": "FAILED", "b": "skipped"}


def test_work_that_changes_nothing_has_no_changed_column():
    console, buf = tty_console()
    with Board(["a"], out=console) as board:
        board.update("a", step="asking")
        board.done("a", ok=False, summary="unreachable")
    plain = ANSI.sub("", buf.getvalue())
    assert "changed" not in plain and "unreachable" in plain


def test_terminal_mode_logs_above_the_board_and_keeps_markup_as_text():
    console, buf = tty_console()
    errors, ebuf = tty_console()
    with Board(["[node]"], out=console, err=errors) as board:
        board.update("[node]", step="[red]step[/red]")
        board.log("[node]: FAILED at x:", err=True)
    text = ANSI.sub("", buf.getvalue())
    assert "[node]: FAILED at x:" in text and "[red]step[/red]" in text
    assert ebuf.getvalue() == ""                            # drawn through the board's console, not interleaved
    # stderr redirected to a file (2>log): the failure goes there, not to the terminal
    console, buf = tty_console()
    errors, ebuf = plain_console()
    with Board(["a"], out=console, err=errors) as board:
        board.log("a: FAILED at x:", err=True)
    assert ebuf.getvalue() == "a: FAILED at x:\n" and "FAILED at x" not in buf.getvalue()


def test_transient_board_leaves_nothing_behind_its_last_drawing():
    console, buf = tty_console()
    with Board(["a", "b"], out=console, transient=True) as board:
        board.done("a", ok=True)
        board.done("b", ok=True)
    assert buf.getvalue().endswith("\x1b[2K") or "\x1b[2K" in buf.getvalue().rsplit("host(s) done", 1)[-1]


def test_no_host_name_is_cut_on_80_columns():
    console, buf = tty_console(80)
    hosts = ["perinatal-centre-lami-with-a-long-name", "tsami"]
    with Board(hosts, out=console) as board:
        board.update(hosts[0], step="a step with a long description " * 4, changed=12)
    text = ANSI.sub("", buf.getvalue())
    rows = [ln for ln in text.splitlines() if "│" in ln and "host" not in ln]
    assert any(hosts[0] in ln and "12" in ln and "running" in ln for ln in rows)   # whole, one line
    assert all(len(ln) <= 80 for ln in rows)


def test_workers_in_threads_update_safely():
    hosts = [f"node{i:02d}" for i in range(16)]
    for make in (plain_console, tty_console):
        console, buf = make()
        barrier = threading.Barrier(len(hosts), timeout=30)
        with Board(hosts, out=console) as board:
            def work(h):
                barrier.wait()              # every worker at once
                for step in range(20):
                    board.update(h, step=f"step {step}", changed=step, line=f"{h}: step {step}")
                board.done(h, ok=True, changed=19, line=f"{h}: done")
            threads = [threading.Thread(target=work, args=(h,)) for h in hosts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert set(board.states().values()) == {"ok"}
        if make is plain_console:
            lines = buf.getvalue().splitlines()
            assert len(lines) == len(hosts) * 21
            assert all(re.fullmatch(r"node\d\d: (step \d+|done)", ln) for ln in lines)
            for h in hosts:                 # each worker's lines in its own order
                mine = [ln for ln in lines if ln.startswith(h)]
                assert mine == [f"{h}: step {s}" for s in range(20)] + [f"{h}: done"]


def test_under_gevents_monkey_patching_as_in_the_deploy_runner(tmp_path):
    """The deploy runner patches the standard library with gevent and works in
    greenlets: the board (its lock, rich's refresh thread) must work there too.
    In a subprocess: the patching would leak into the other tests."""
    import subprocess
    import sys
    script = tmp_path / "board_gevent.py"
    script.write_text('''
from gevent import monkey
monkey.patch_all()
import io, re, gevent
from rich.console import Console
from kontur.progress import Board
for terminal in (True, False):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=80, color_system="standard" if terminal else None)
    hosts = [f"h{i}" for i in range(8)]
    with Board(hosts, out=console, refresh_per_second=50) as board:
        def work(h):
            for s in range(5):
                board.update(h, step=f"s{s}", changed=s, line=f"{h}: s{s}")
                gevent.sleep(0)
            board.done(h, ok=True, changed=4, line=f"{h}: done")
        gevent.joinall([gevent.spawn(work, h) for h in hosts])
    assert set(board.states().values()) == {"ok"}, board.states()
    text = buf.getvalue()
    if terminal:
        plain = re.sub(r"\\x1b\\[[0-9;?]*[A-Za-z]", "", text)
        assert "8 of 8 host(s) done" in plain, plain
    else:
        assert len(text.splitlines()) == 48 and "\\x1b[" not in text
print("ok")
''')
    import os
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_paused_for_a_question_and_hosts_added_later():
    console, buf = tty_console()
    board = Board([], out=console)
    with board:
        board.add("b", "a")
        board.update("a", step="plan")
        with board.paused():
            console.print("deploy 2 host(s)? [y/N]", markup=False)
            assert board._live is None                # nothing redraws over the question
        board.done("a", ok=True)
        board.done("b", ok=True)
    plain = ANSI.sub("", buf.getvalue())
    assert "deploy 2 host(s)? [y/N]" in plain
    after = plain.split("deploy 2 host(s)? [y/N]", 1)[1]
    assert "2 of 2 host(s) done" in after                # drawn again after the question
    rows = [ln for ln in after.splitlines() if ln.startswith("│")]
    assert [r.split()[1] for r in rows[-2:]] == ["b", "a"]    # in the order added
    console, buf = plain_console()
    with Board([], out=console) as board:               # plain: paused() is nothing
        with board.paused():
            pass
    assert buf.getvalue() == ""
