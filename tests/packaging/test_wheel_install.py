# SPDX-License-Identifier: AGPL-3.0-or-later
"""Installing only the CLI (issue 14, item 5): the project's wheel, built (not
editable) and installed into a fresh venv, gives a working ``kontur`` with
everything it reads at run time (kontur.paths.SHARED as package data), run from
another directory with no checkout on the path.

The build and the install ask no index: both read a local wheelhouse
(tests/packaging/wheelhouse.py, filled by ``./run setup``, else here).
"""
from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kontur import packages

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wheelhouse  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example"
#: what a checkout has that is no part of the project
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".wheels", "out", "build", "dist", "*.egg-info", "_share",
                                     "__pycache__", "*.pyc", ".pytest_cache")


def _env(**extra: str) -> dict[str, str]:
    """No checkout on the path and no pip configuration: only the wheelhouse."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KONTUR_INVENTORY") and not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PYTHONNOUSERSITE": "1", **extra}


def _run(args, cwd: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, args))} exited {done.returncode}\n"
                                  f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def installed():
    """(the fresh venv's bin/, a working directory outside the checkout)"""
    house = wheelhouse.prepare()
    tmp = Path(tempfile.mkdtemp(prefix="kontur-wheel-"))
    try:
        src, dist, venv, work = tmp / "src", tmp / "dist", tmp / "venv", tmp / "work"
        shutil.copytree(REPO, src, ignore=_NOT_SOURCE, symlinks=True)
        work.mkdir()
        env = _env()
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--find-links", house,
              "-w", dist, src], cwd=work, env=env)
        (wheel,) = dist.glob("kontur-*.whl")
        _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, env=env)
        _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-index",
              "--find-links", house, wheel], cwd=work, env=env)
        shutil.copytree(EXAMPLE, work / "inv")
        yield venv / "bin", work
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_installed_package_reads_its_own_data(installed):
    bin_, work = installed
    out = _run([bin_ / "python", "-c", "import kontur.paths as p; print(p.INSTALLED, p.ROOT)"],
               cwd=work, env=_env()).stdout.split()
    assert out[0] == "True"
    assert Path(out[1]).is_relative_to(bin_.parent), f"kontur's data is read from {out[1]}, not the venv"
    assert not Path(out[1]).is_relative_to(REPO)
    # pyinfra imports the deploys; the audit runs pytest and testinfra (main dependencies, not the test extra)
    _run([bin_ / "python", "-c", "from kontur import paths; paths.importable(); import deploys.region; "
          "import pytest, testinfra"], cwd=work, env=_env())


def test_validate(installed):
    bin_, work = installed
    done = _run([bin_ / "kontur", "validate", "-i", "inv/region.yaml"], cwd=work, env=_env())
    assert "the region is sound" in done.stdout
    # the example region the package carries, with no -i
    done = _run([bin_ / "kontur", "validate"], cwd=work, env=_env())
    assert "the region is sound" in done.stdout


def test_render_gives_what_the_checkout_renders(installed):
    bin_, work = installed
    wheels = str(packages.WHEEL_DIR)   # the pinned node wheel the HL7 service ships (./run setup fetches it)
    env = _env(KONTUR_WHEEL_DIR=wheels)
    _run([bin_ / "kontur", "render", "-i", "inv/region.yaml", "--out", "out", "--secrets", "secrets"],
         cwd=work, env=env)
    for node in ("tsami", "gkb3-lami", "crb-gw"):
        for f in ("manifest.json", "etc/orthanc/orthanc.json", "etc/nftables.conf",
                  "usr/lib/kontur/plugins/kontur_entry.py", "usr/lib/kontur/lua/roles.lua"):
            assert (work / "out" / node / f).is_file(), f"{node}: {f} not rendered"
    assert (work / "out" / "gkb3-lami" / "usr/lib/kontur/services/kontur_hl7/server.py").is_file()
    # the same store rendered by the checkout: every file the same
    _run([sys.executable, "-m", "kontur", "render", "-i", "inv/region.yaml", "--out", "from-checkout",
          "--secrets", "secrets"], cwd=work, env={**env, "PYTHONPATH": str(REPO)})
    diff = filecmp.dircmp(work / "out", work / "from-checkout")
    differ = []

    def walk(d, prefix=""):
        differ.extend(prefix + n for n in d.left_only + d.right_only + d.diff_files + d.funny_files)
        for name, sub in d.subdirs.items():
            walk(sub, f"{prefix}{name}/")
    walk(diff)
    assert not differ, f"the installed kontur renders differently from the checkout: {differ[:10]}"
    # kontur audit's controls, as the installed package carries them, load against that store
    checks = _run([bin_ / "python", "-c", "from kontur import paths; print(paths.CHECKS)"],
                  cwd=work, env=env).stdout.strip()
    done = _run([bin_ / "python", "-m", "pytest", checks, "--collect-only", "-q", "-p", "no:cacheprovider",
                 "--inventory", "inv/region.yaml", "--secrets", "secrets"], cwd=work, env=env)
    assert "tests collected" in done.stdout and "error" not in done.stdout.lower(), done.stdout[-2000:]


def test_check_and_audit_help(installed):
    bin_, work = installed
    assert "On-call" in _run([bin_ / "kontur", "check", "--help"], cwd=work, env=_env()).stdout
    _run([bin_ / "kontur", "audit", "--help"], cwd=work, env=_env())
