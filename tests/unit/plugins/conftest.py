"""Unit tests of the plugin's pure logic: ``plugins/`` on sys.path, no Orthanc."""
from __future__ import annotations

import sys
from pathlib import Path

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"
if str(PLUGINS) not in sys.path:
    sys.path.insert(0, str(PLUGINS))
