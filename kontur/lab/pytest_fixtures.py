"""pytest fixtures for end-to-end tests in the region lab.

``tests/lab/conftest.py`` imports them; another test folder reuses them with::

    from kontur.lab.pytest_fixtures import example_lab, lab, lab_manager, no_lab  # noqa: F401

``lab`` (session scope) is the small test region (tests/data/small-region.yaml,
or ``$KONTUR_LAB_TEST_INVENTORY``) brought up once per session; ``example_lab``
(module scope) is the full example region.  One lab runs at a time (one
bridge): a process-wide manager brings the running one down before another
comes up, and ``pytest_collection_modifyitems`` (in the conftest) runs the
tests that use ``example_lab`` last, so the small lab is up once and the
example region once.  Whatever happens, the lab is brought down at the end of
the session; a lab left behind by a crashed earlier run is brought down at the
start (found by its state file).

Tests run with ``KONTUR_LAB_DIR`` set to /var/lib/kontur/lab-test (unless it
is set already), so a developer's own lab is never touched: if one is up, the
lab tests fail saying so.  Without root or systemd-nspawn the lab tests fail
with the reason -- they never skip silently; ``pytest -m "not lab"`` leaves
them out.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from ..errors import KonturError
from ..inventory import EXAMPLE_INVENTORY, REPO_ROOT, load
from .state import LabState, load_state

SMALL_INVENTORY = REPO_ROOT / "tests" / "data" / "small-region.yaml"
TEST_LAB_DIR = "/var/lib/kontur/lab-test"


def _say(msg: str) -> None:
    print(f"[kontur lab] {msg}", file=sys.__stderr__, flush=True)


class LabManager:
    """One lab at a time for the whole test session (a process-wide singleton)."""

    def __init__(self) -> None:
        self.inventory: Path | None = None
        self.state: LabState | None = None
        self.failed: dict[Path, str] = {}
        self.prepared = False

    def prepare(self) -> None:
        if self.prepared:
            return
        problems = []
        if os.geteuid() != 0:
            problems.append("they must run as root (network namespaces, a bridge, mounts, containers)")
        for tool, pkg in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
            if shutil.which(tool) is None:
                problems.append(f"{tool} is missing (Debian package {pkg})")
        if problems:
            pytest.fail("the lab tests cannot run: " + "; ".join(problems)
                        + ". Run them as root on a machine set up by ./run, or leave them out with "
                          "-m 'not lab'", pytrace=False)
        os.environ.setdefault("KONTUR_LAB_DIR", TEST_LAB_DIR)
        self.prepared = True
        self._down("a lab left behind by an earlier run")

    def _down(self, why: str) -> None:
        from .ops import down
        try:
            if load_state() is not None:
                _say(f"bringing down {why}")
                down(progress=_say)
        except KonturError as exc:
            pytest.fail(f"cannot bring down {why}: {exc.message}", pytrace=False)
        self.inventory, self.state = None, None

    def ensure(self, inventory: Path) -> LabState:
        """The lab of ``inventory``, brought up if it is not the one running."""
        from .ops import up
        self.prepare()
        inventory = Path(inventory).resolve()
        if inventory in self.failed:
            pytest.fail(self.failed[inventory], pytrace=False)
        running = load_state()
        if self.inventory == inventory and running is not None and running.status == "up":
            self.state = running
            return running
        if running is not None:
            self._down(f"the lab of {running.inventory}")
        try:
            region = load(inventory)
            _say(f"bringing up the lab of {inventory}")
            self.state = up(region, inventory, progress=_say)
            self.inventory = inventory
        except Exception as exc:   # noqa: BLE001 -- every failure becomes a clear test failure
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            hint = getattr(exc, "hint", None)
            self.failed[inventory] = f"kontur lab up -i {inventory} failed: {msg}" + (f" ({hint})" if hint else "")
            pytest.fail(self.failed[inventory], pytrace=False)
        return self.state

    def ensure_none(self) -> None:
        """No lab up (for tests of ``lab up`` refusing or failing)."""
        self.prepare()
        self._down("the running lab")

    def shutdown(self) -> None:
        if self.prepared:
            self._down("the test lab")


MANAGER = LabManager()


@pytest.fixture(scope="session")
def lab_manager():
    """The session's lab manager; always brings the lab down at the end."""
    try:
        yield MANAGER
    finally:
        MANAGER.shutdown()


@pytest.fixture(scope="session")
def lab(lab_manager) -> LabState:
    """The small test region's lab, up for the whole session."""
    inv = Path(os.environ.get("KONTUR_LAB_TEST_INVENTORY") or SMALL_INVENTORY)
    return lab_manager.ensure(inv)


@pytest.fixture(scope="module")
def example_lab(lab_manager) -> LabState:
    """The example region's lab (inventory/example/region.yaml)."""
    return lab_manager.ensure(EXAMPLE_INVENTORY)


@pytest.fixture
def no_lab(lab_manager) -> None:
    """No lab is up when the test starts (whatever ran before is brought down)."""
    lab_manager.ensure_none()


def order_example_last(items: list) -> None:
    """Run tests that use ``example_lab`` after all others, then those that need
    ``no_lab``: the small lab comes up once, the example region once."""
    def rank(item) -> int:
        names = getattr(item, "fixturenames", ())
        if "no_lab" in names:
            return 3
        if "example_lab" in names:
            return 2
        # the lab's own tests want bare hosts: they run before anything deploys
        # into the small lab (a deployed firewall lets only the operator in)
        if "lab" in names and "tests/lab/" in str(getattr(item, "path", "")).replace("\\", "/"):
            return 0
        return 1
    items.sort(key=rank)
