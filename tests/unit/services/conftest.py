"""Unit tests of the node services' pure logic: ``services/`` on sys.path."""
from __future__ import annotations

import sys
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[3] / "services"
if str(SERVICES) not in sys.path:
    sys.path.insert(0, str(SERVICES))
