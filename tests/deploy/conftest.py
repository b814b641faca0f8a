# SPDX-License-Identifier: AGPL-3.0-or-later
"""Deploy tests: ``deploys/`` is importable from the repository root."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
