# SPDX-License-Identifier: AGPL-3.0-or-later
"""A local wheelhouse of what a fresh venv needs to build and install kontur's
wheel without asking any index: the build backend (pyproject's
``build-system.requires``) and the run-time dependencies, at the versions this
venv runs (``pip freeze`` as constraints).  ``./run setup`` fills it; the
packaging test fills it itself when it is missing or out of date.

    python tests/packaging/wheelhouse.py [DIR]     # default: .wheels/deps
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / ".wheels" / "deps"
STAMP = ".kontur-stamp"


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return [*project["build-system"]["requires"], *project["project"]["dependencies"]]


def _constraints() -> str:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout
    # a line like "name @ file:///…" is not a constraint pip accepts
    return "".join(line + "\n" for line in frozen.splitlines() if line and "@" not in line and "==" in line)


def prepare(directory: Path = DEFAULT) -> Path:
    """Fill ``directory`` (once per requirement list and venv) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    constraints = _constraints()
    want = hashlib.sha256("\n".join([*reqs, constraints]).encode()).hexdigest()
    stamp = directory / STAMP
    if stamp.is_file() and stamp.read_text().strip() == want:
        return directory
    cfile = directory / "constraints.txt"
    cfile.write_text(constraints)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                           "-d", str(directory), "-c", str(cfile), *reqs], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"wheelhouse: pip download into {directory} failed:\n{done.stderr.strip()[-2000:]}")
    stamp.write_text(want + "\n")
    return directory


if __name__ == "__main__":
    print(prepare(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
