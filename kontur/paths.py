# SPDX-License-Identifier: AGPL-3.0-or-later
"""Where kontur's files beside its Python code are: the one place that decides.

kontur reads at run time what lives in the checkout's top-level folders
(:data:`SHARED`): jinja2 templates, the Orthanc plugins and Lua filters it
renders into every node's bundle, the node services, the pyinfra deploys, the
audit's controls and the example region.

* Installed from a wheel (``pip install kontur-….whl``): the build copied those
  folders into the package as ``kontur/_share/<folder>`` (``setup.py``), and
  they are read from there; no checkout is needed.
* From a checkout (editable install, ``PYTHONPATH``, plain ``pyinfra
  inventory/region.py deploys/region.py``): the checkout's own folders.

Only the standard library here: ``setup.py`` loads this file to learn what to
ship before kontur's dependencies are installed.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

#: the top-level folders of the checkout that the installed package carries
SHARED = ("templates", "plugins", "orthanc-lua", "services", "deploys", "checks", "inventory")

#: the ``kontur`` package itself
PACKAGE = Path(__file__).resolve().parent
#: where the build puts :data:`SHARED` inside the package
SHARE = PACKAGE / "_share"
#: True when kontur runs from an installed wheel (the shared folders are package data)
INSTALLED = (SHARE / "deploys" / "region.py").is_file()
#: the folder that holds :data:`SHARED`: ``kontur/_share`` installed, else the checkout
ROOT = SHARE if INSTALLED else PACKAGE.parent

TEMPLATES = ROOT / "templates"
PLUGINS = ROOT / "plugins"
LUA = ROOT / "orthanc-lua"
SERVICES = ROOT / "services"
DEPLOYS = ROOT / "deploys"
CHECKS = ROOT / "checks"
INVENTORY = ROOT / "inventory"
EXAMPLE_INVENTORY = INVENTORY / "example" / "region.yaml"
#: programs kontur ships to nodes (the health probe, the config checker): inside the package either way
SCRIPTS = PACKAGE / "scripts"


def wheels() -> Path:
    """Where this control machine keeps the pinned wheels the nodes' services need
    (:data:`kontur.packages.NODE_WHEELS`): ``KONTUR_WHEEL_DIR``, else ``.wheels`` in
    the checkout (``./run setup`` fills it), else, installed,
    ``$XDG_DATA_HOME/kontur/wheels`` (``~/.local/share/kontur/wheels``)."""
    if os.environ.get("KONTUR_WHEEL_DIR"):
        return Path(os.environ["KONTUR_WHEEL_DIR"])
    if not INSTALLED:
        return ROOT / ".wheels"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "kontur" / "wheels"


def importable() -> Path:
    """Make ``deploys`` importable (pyinfra runs ``deploys.region``): put
    :data:`ROOT` on ``sys.path`` once, and return it."""
    root = str(ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    return ROOT
