# SPDX-License-Identifier: AGPL-3.0-or-later
"""A live board for long work over many hosts (issue 14: progress where work is long).

On a terminal, :class:`Board` draws one line per host -- host, current step,
changed count, elapsed, state -- refreshed in place (rich's ``Live``).  Anywhere
else (a pipe, CI, a log file, the tests) it draws nothing and prints exactly the
plain lines the caller hands it, one per event, as the commands always did::

    board = Board(["onco-lami", "tsami"], out=console, err=err_console, title="deploy")
    with board:
        board.update("tsami", step="Orthanc: config")                  # the board only
        board.update("tsami", step="Orthanc: config", changed=3,
                     line="tsami: Orthanc: config")                    # + this line when plain
        board.log("tsami: FAILED at Orthanc:", err=True)               # always, above the board
        board.done("tsami", ok=False, summary="at Orthanc")
        with board.paused():                                           # a question to the operator
            ...

Every method may be called from any thread, and from greenlets under gevent's
monkey-patching as in the deploy runner (one lock around the state; rich's
``Live`` has its own for the terminal).  Host names and steps are printed as
text, never as rich markup (``[node]`` stays ``[node]``).
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

WAITING, RUNNING, OK, FAILED, SKIPPED = "waiting", "running", "ok", "FAILED", "skipped"
_STYLE = {WAITING: "dim", RUNNING: "cyan", OK: "green", FAILED: "bold red", SKIPPED: "yellow"}


@dataclass
class _Row:
    host: str
    step: str = ""
    changed: int | None = None
    state: str = WAITING
    started: float | None = None
    ended: float | None = None
    summary: str = ""


def _elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds) // 60} min {int(seconds) % 60:02d} s"


class Board:
    """One line per host while work runs over many hosts.

    + hosts: the hosts in the order they are shown (a host not named here is
      added at the end when it is first updated)
    + out: where plain lines go and where the board is drawn; err: where lines
      logged with ``err=True`` go (default: ``out``)
    + live: force the board on or off (default: on when ``out`` is a terminal)
    + transient: clear the board when the work is over (a command that prints
      its own table afterwards); else the last board stays on the screen
    + clock: seconds, monotonic (the tests pass their own)
    """

    def __init__(self, hosts: Iterable[str], out: Console, *, err: Console | None = None, title: str | None = None,
                 live: bool | None = None, transient: bool = False, refresh_per_second: float = 4,
                 clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.err = err or out
        self.title = title
        self.clock = clock
        self.live = (out.is_terminal and not out.is_dumb_terminal) if live is None else live
        self._rows: dict[str, _Row] = {h: _Row(h) for h in hosts}
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._transient = transient
        self._refresh = refresh_per_second

    # --- the context -------------------------------------------------------

    def __enter__(self) -> "Board":
        if self.live:
            self._live = Live(get_renderable=self.render, console=self.out, transient=self._transient,
                              refresh_per_second=self._refresh, redirect_stdout=False, redirect_stderr=False)
            self._live.start(refresh=True)
        return self

    def __exit__(self, *exc) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()                     # draws the board one last time (or clears it, transient)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The board off the screen for a while -- a question to the operator
        (the deploy's confirmation) -- and drawn again afterwards."""
        if self._live is None:
            yield
            return
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    def add(self, *hosts: str) -> None:
        """Hosts known only once the work has begun (shown waiting, in this order)."""
        with self._lock:
            for h in hosts:
                self._row(h)

    # --- what the workers call --------------------------------------------

    def update(self, host: str, *, step: str | None = None, changed: int | None = None,
               line: str | None = None) -> None:
        """``host`` is at ``step`` with ``changed`` operations changed so far.
        ``line``: what a plain run prints for this event (nothing when None);
        the board shows the step instead."""
        with self._lock:
            row = self._row(host)
            if row.started is None:
                row.started = self.clock()
            if row.state == WAITING:
                row.state = RUNNING
            if step is not None:
                row.step = step
            if changed is not None:
                row.changed = changed
        if line is not None and not self.live:
            self.out.print(line, markup=False, highlight=False)

    def done(self, host: str, *, ok: bool | None = True, summary: str = "", changed: int | None = None,
             line: str | None = None) -> None:
        """``host`` is finished: ``ok``, failed (False) or left alone (None: not
        started after a failed batch), with a short ``summary`` for its line
        (``line``: what a plain run prints, nothing when None)."""
        with self._lock:
            row = self._row(host)
            now = self.clock()
            if row.started is None and ok is not None:
                row.started = now
            row.ended = now
            row.state = SKIPPED if ok is None else OK if ok else FAILED
            row.summary = summary
            if changed is not None:
                row.changed = changed
        if line is not None and not self.live:
            self.out.print(line, markup=False, highlight=False)
        self._redraw()

    def log(self, line: str, *, err: bool = False) -> None:
        """A line printed in both modes (a failure's cause, a diff, a batch
        header): above the board on a terminal, as it is elsewhere."""
        console = self.err if err else self.out
        with self._lock:          # one whole line at a time, whichever thread
            if self._live is not None and console is not self.out and console.is_terminal:
                # both on the terminal, the board drawn on `out`: through it, so the line lands
                # above the board (a redirected `err` -- 2>file -- keeps its lines)
                self._live.console.print(line, markup=False, highlight=False)
            else:
                console.print(line, markup=False, highlight=False)

    # --- what is drawn ----------------------------------------------------

    def states(self) -> dict[str, str]:
        with self._lock:
            return {h: r.state for h, r in self._rows.items()}

    def render(self) -> Table:
        """The board as a rich Table (what ``Live`` redraws)."""
        with self._lock:
            rows = [(_Row(**vars(r))) for r in self._rows.values()]
            now = self.clock()
        done = sum(1 for r in rows if r.state in (OK, FAILED, SKIPPED))
        title = f"{self.title + ': ' if self.title else ''}{done} of {len(rows)} host(s) done"
        t = Table(title=title, title_justify="left", expand=False)
        t.add_column("host", no_wrap=True, min_width=max([4, *(len(r.host) for r in rows)]))
        # one line per host: a long step or summary ends in "…" here (the plain lines and the
        # failure's own lines keep it whole); the host never does
        # (the columns may shrink, the cells' Text does not wrap)
        t.add_column("step")
        counted = any(r.changed is not None for r in rows)      # work that changes nothing has no count
        if counted:
            t.add_column("changed", justify="right", no_wrap=True)
        t.add_column("elapsed", justify="right", no_wrap=True)
        t.add_column("state", min_width=max(len(s) for s in _STYLE))
        for r in rows:
            elapsed = "" if r.started is None else _elapsed((r.ended if r.ended is not None else now) - r.started)
            state = Text(r.state, style=_STYLE[r.state], no_wrap=True, overflow="ellipsis")
            if r.summary:
                state.append(f" {r.summary}", style="default")
            cells = [Text(r.host), Text(r.step, no_wrap=True, overflow="ellipsis")]
            if counted:
                cells.append("" if r.changed is None else str(r.changed))
            t.add_row(*cells, elapsed, state)
        return t

    # --- inside -----------------------------------------------------------

    def _row(self, host: str) -> _Row:
        row = self._rows.get(host)
        if row is None:
            row = self._rows[host] = _Row(host)
        return row

    def _redraw(self) -> None:
        live = self._live
        if live is not None:
            live.refresh()
