# SPDX-License-Identifier: AGPL-3.0-or-later
"""The one build step pyproject.toml cannot say: the wheel carries the
checkout's top-level folders kontur reads at run time (kontur.paths.SHARED:
templates/, plugins/, deploys/, checks/, …) as package data under
``kontur/_share/``, where :mod:`kontur.paths` finds them once installed.

The folders stay where they are in the checkout; an editable install reads
them there (nothing is copied for it).
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _paths():
    # kontur/paths.py by file: the package's dependencies are not installed at build time
    spec = importlib.util.spec_from_file_location("_kontur_paths", HERE / "kontur" / "paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithShare(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        paths = _paths()
        share = Path(self.build_lib) / "kontur" / paths.SHARE.name
        shutil.rmtree(share, ignore_errors=True)
        for name in paths.SHARED:
            src = HERE / name
            if not src.is_dir():
                raise SystemExit(f"setup.py: {src} is missing: the wheel must carry it (kontur.paths.SHARED)")
            shutil.copytree(src, share / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
        # kontur audit runs pytest on checks/ here: this file ends pytest's search for a
        # configuration (in a checkout it finds pyproject.toml), so none from above the venv applies
        (share / "pytest.ini").write_text("[pytest]\n")


setup(cmdclass={"build_py": BuildPyWithShare})
