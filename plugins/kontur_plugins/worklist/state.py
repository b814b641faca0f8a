# SPDX-License-Identifier: AGPL-3.0-or-later
"""Reading the HL7 service's state (``services/kontur_hl7/store.py``):
read-only, nothing while the service has not created its tables yet.  The
one place the plugin touches that database.

The database is named by the spec the policy's ``worklist.db`` carries (the
service's ``services/kontur_hl7/db.py`` describes it): ``{"sqlite": PATH}``
(one short read-only connection per read) or ``{"postgresql": {...}}`` (the
node's PostgreSQL through its local socket, peer authentication as the
``orthanc`` user: one connection, kept, read-only, opened again after a
failure).  A plain path string is read as SQLite.  SQL is written with
``?`` placeholders for both.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def describe(db) -> str:
    spec = _spec(db)
    if "postgresql" in spec:
        p = spec["postgresql"]
        return f"PostgreSQL database {p.get('dbname')} on {p.get('host')}:{p.get('port')}"
    return f"SQLite {spec.get('sqlite')}"


def read(db, sql: str, args: tuple = ()) -> list:
    """Rows of ``sql`` ([] if the database or its table does not exist yet);
    a row answers ``row[0]`` and ``row["column"]``."""
    spec = _spec(db)
    if "postgresql" in spec:
        return _postgres(spec["postgresql"]).read(sql, args)
    return _sqlite(spec["sqlite"], sql, args)


def _spec(db) -> dict:
    if isinstance(db, (str, Path)):
        return {"sqlite": str(db)}
    if isinstance(db, dict) and ("sqlite" in db or "postgresql" in db):
        return db
    raise ValueError(f"worklist database {db!r}: expected {{'sqlite': PATH}} or {{'postgresql': {{...}}}}")


def _sqlite(db_path, sql: str, args: tuple) -> list:
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


class _Postgres:
    def __init__(self, params: dict):
        import psycopg2  # noqa: PLC0415 - Debian's python3-psycopg2, only on a node with PostgreSQL
        import psycopg2.errors  # noqa: PLC0415
        import psycopg2.extras  # noqa: PLC0415
        self.pg = psycopg2
        self.params = dict(params)
        self.lock = threading.Lock()
        self.conn = None

    def read(self, sql: str, args: tuple) -> list:
        pg = self.pg
        with self.lock:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = pg.connect(connect_timeout=5, application_name="kontur-orthanc-worklist",
                                           **self.params)
                    self.conn.set_session(readonly=True, autocommit=True)
                with self.conn.cursor(cursor_factory=pg.extras.DictCursor) as cur:
                    cur.execute(sql.replace("?", "%s"), tuple(args))
                    return cur.fetchall()
            except pg.errors.UndefinedTable:
                return []
            except pg.OperationalError as exc:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                raise RuntimeError(f"{describe({'postgresql': self.params})}: {str(exc).strip()}") from exc


_readers: dict[tuple, _Postgres] = {}
_readers_lock = threading.Lock()


def _postgres(params: dict) -> _Postgres:
    key = tuple(sorted((k, str(v)) for k, v in params.items()))
    with _readers_lock:
        if key not in _readers:
            _readers[key] = _Postgres(params)
        return _readers[key]
