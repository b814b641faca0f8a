# SPDX-License-Identifier: AGPL-3.0-or-later
"""Reading the HL7 service's state (``services/kontur_hl7/store.py``):
read-only, one short connection per read, nothing while the service has not
created its tables yet.  The one place the plugin touches that database."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def read(db_path: str | Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    """Rows of ``sql`` ([] if the database or its table does not exist yet)."""
    path = Path(db_path)
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()
