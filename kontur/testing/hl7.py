"""The HL7 service (``services/kontur_hl7``) as a process for tests and
benches: Debian's python3 and python3-hl7, as on a node, on loopback."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"
MPPS_AET = "ONCO_MPPS"
#: the service's AE title towards its own Orthanc (the attacher)
REPORTS_AET = "KONTUR_HL7"
SITE = {
    "hospitals": [{"hospital": "onco", "facilities": ["ONCO"],
                   "devices": [{"aet": "ONCO_CT1", "modality": "CT", "station_names": ["CT-1"], "host": "127.0.0.1"},
                               {"aet": "ONCO_CT2", "modality": "CT"},
                               {"aet": "ONCO_MR1", "modality": "MR"}],
                   "pathology_codes": ["C34.1"]}],
    "classifier": {"A06.09.005": "Компьютерная томография органов грудной полости"},
    "classifier_version": "2026-01",
}


def site_with_mis(port: int) -> dict:
    """The test site, its hospital's MIS listening on loopback ``port`` (where notifications go)."""
    site = json.loads(json.dumps(SITE))
    site["hospitals"][0].update(mis_host="127.0.0.1", mis_port=port)
    return site


def sqlite_only():
    """A test mark: run a test that takes the ``backend`` fixture on SQLite only.
    For real-Orthanc tests of what the service decides rather than how it keeps
    it; the service tests and a test per route through each database run both."""
    import pytest
    return pytest.mark.parametrize("backend", [{}], ids=["sqlite"])


class Hl7Service:
    def __init__(self, tmp: Path, idle: float = 30, site: dict | None = None, mpps: bool = False,
                 postgres=None, reports: dict | None = None, notify: dict | None = None, events: bool = False):
        """``postgres``: a started :class:`kontur.testing.postgres.PostgresProcess`
        to keep the state in (a database of its own in it), as on a LAMI;
        SQLite in ``tmp`` without one, as on a gateway."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.state = tmp / "state"
        self.config = tmp / "hl7.json"
        if postgres is not None:
            name = f"hl7_{abs(hash(str(tmp))) % 10**8}"
            postgres.create_database(name)
            self.database = {"postgresql": {"host": str(postgres.workdir), "port": postgres.port, "dbname": name,
                                            "user": postgres.user}}
        else:
            self.database = {"sqlite": str(self.state / "hl7.sqlite3")}
        cfg = {"listen": {"host": "127.0.0.1", "port": 0}, "state_dir": str(self.state), "site": site or SITE,
               "idle_timeout_seconds": idle, "max_message_bytes": 1024 * 1024, "database": self.database}
        if mpps:
            cfg["mpps"] = {"host": "127.0.0.1", "port": 0, "ae_title": MPPS_AET}
        # a Unix socket's path has at most 107 bytes: not under pytest's long temporary names
        self._events_dir = Path(tempfile.mkdtemp(prefix="kontur-ev-")) if events else None
        self.events_socket = str(self._events_dir / "events.sock") if events else None
        if events:              # the socket the node's Orthanc plugin tells the studies' steps on
            cfg["events"] = {"socket": self.events_socket}
        if notify is not None:  # notifications to the MIS (the site's hospitals name mis_host, mis_port)
            cfg["notify"] = {"application": "KONTUR", "retry_seconds": 0.2, "max_retry_seconds": 1, **notify}
        if reports:             # the attacher: results into their studies on this Orthanc (host, port, called_aet)
            cfg["reports"] = {"calling_aet": REPORTS_AET, "retry_seconds": 0.5, "max_retry_seconds": 2, **reports}
        self.config.write_text(json.dumps(cfg, ensure_ascii=False))
        self.log = tmp / "hl7.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.mpps_port = 0
        self.wants_mpps = mpps or bool(reports)

    def start(self) -> None:
        path = [str(REPO / "services")]
        if self.wants_mpps:
            from kontur.packages import wheel_path  # noqa: PLC0415
            path.append(str(wheel_path("pynetdicom")))    # as the node's unit puts it on the path
        env = dict(os.environ, PYTHONPATH=":".join(path))
        self.proc = subprocess.Popen([PYTHON, "-m", "kontur_hl7.server", "--config", str(self.config)],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
        ready = threading.Event()
        self.port = 0

        def pump():
            with open(self.log, "a", encoding="utf-8") as out:
                for line in self.proc.stderr:
                    out.write(line)
                    out.flush()
                    m = re.search(r"MPPS SCP \S+ listening on \('127\.0\.0\.1', (\d+)\)", line)
                    if m:
                        self.mpps_port = int(m.group(1))
                    m = re.search(r"listening for HL7 over MLLP on \('127\.0\.0\.1', (\d+)\)", line)
                    if m:
                        self.port = int(m.group(1))
                        ready.set()
            ready.set()
        threading.Thread(target=pump, daemon=True).start()
        ready.wait(30)
        if not self.port:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"the HL7 service did not start:\n{self.log.read_text()}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def remove(self) -> None:
        """Stop it and remove what it left outside its directory (the events socket's)."""
        self.stop(signal.SIGKILL)
        if self._events_dir is not None:
            shutil.rmtree(self._events_dir, ignore_errors=True)

    def client(self, encoding="utf-8"):
        import hl7.client  # noqa: PLC0415 - python-hl7's MLLP client: the MIS side
        return hl7.client.MLLPClient("127.0.0.1", self.port, encoding=encoding)

    @contextmanager
    def db(self):
        """A read connection to the service's state: ``execute(sql with ?, args)``
        returns a cursor whose rows answer ``row[0]`` and ``row["column"]``."""
        if "sqlite" in self.database:
            c = sqlite3.connect(f"file:{self.database['sqlite']}?mode=ro", uri=True)
            c.row_factory = sqlite3.Row
            try:
                yield c
            finally:
                c.close()
            return
        import psycopg2  # noqa: PLC0415
        import psycopg2.extras  # noqa: PLC0415
        conn = psycopg2.connect(**self.database["postgresql"])
        conn.autocommit = True
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.DictCursor) as cur:
                class Reader:
                    @staticmethod
                    def execute(sql, args=()):
                        cur.execute(sql.replace("?", "%s"), tuple(args))
                        return cur
                yield Reader()
        finally:
            conn.close()

    def notifications(self) -> list[dict]:
        with self.db() as c:
            rows = c.execute("SELECT id, kind, accession, control_id, url, state, attempts, last_error, ack_code "
                             "FROM notifications ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def results(self) -> list[dict]:
        with self.db() as c:
            rows = c.execute("SELECT id, accession, study_uid, status, pathology, state, reason, sop_uid "
                             "FROM results ORDER BY id").fetchall()
        return [dict(r) for r in rows]

    def items(self, status=None) -> list[dict]:
        with self.db() as c:
            rows = c.execute("SELECT status, item FROM items ORDER BY aet").fetchall()
        return [dict(json.loads(r["item"]), status=r["status"]) for r in rows
                if status is None or r["status"] == status]


def orm(control="NW", *, cid, msh18="UNICODE UTF-8", accession="ACC1", name="Иванов^Пётр^Ильич",
        code="A06.09.005", pid="12345", obr24="CT", extra="", facility="ONCO") -> str:
    """An order as a MIS sends it (ORM^O01, HL7 v2.5)."""
    return "\r".join([
        f"MSH|^~\\&|MIS|{facility}|KONTUR|LAMI|20261201120000||ORM^O01|{cid}|P|2.5||||||{msh18}",
        f"PID|1||{pid}^^^{facility}||{name}||19700101|M",
        f"ORC|{control}|P-{accession}|{accession}",
        f"OBR|1|P-{accession}|{accession}|{code}^^RU-804N||||||||||||||{accession}||||||{obr24}",
    ]) + "\r" + extra


def oru(*, cid, accession="ACC1", findings="Очаговых изменений в лёгких не выявлено.",
        conclusion="Без патологии.", flag="N", status="F", msh18="UNICODE UTF-8", facility="ONCO", pid="12345",
        name="Иванов^Пётр^Ильич", extra: list[str] | None = None) -> str:
    """A study's result as the MIS (or RIS) sends it (ORU^R01, HL7 v2.5): the
    protocol in one OBX, the conclusion with its abnormal flag (OBX-8) in another."""
    return "\r".join([
        f"MSH|^~\\&|RIS|{facility}|KONTUR|LAMI|20261201130000||ORU^R01|{cid}|P|2.5||||||{msh18}",
        f"PID|1||{pid}^^^{facility}||{name}||19700101|M",
        f"OBR|1|P-{accession}|{accession}|A06.09.005^^RU-804N|||20261201120000||||||||||||{accession}|||||{status}",
        f"OBX|1|TX|18782-3^Протокол^LN||{findings}||||||{status}|||20261201125500||^Сидоров^Алексей^Петрович",
        f"OBX|2|TX|19005-8^Заключение^LN||{conclusion}|||{flag}|||{status}",
        *(extra or []),
    ]) + "\r"


class Hl7apyMis:
    """A hospital's MIS as a peer kontur did not write: hl7apy's MLLP server
    on loopback, recording each message it is sent (its ER7 text) and
    answering AA -- or AR for the accession numbers in ``refuse``.  Stop it
    and start it again on the same port to play a MIS that was down."""

    def __init__(self, port: int = 0):
        self.port = port
        self.messages: list[str] = []
        self.refuse: set[str] = set()
        self._server = None
        self._thread = None
        self._lock = threading.Lock()

    def start(self) -> "Hl7apyMis":
        from hl7apy.mllp import AbstractHandler, MLLPServer  # noqa: PLC0415
        from hl7apy.parser import parse_message  # noqa: PLC0415
        mis = self

        class Server(MLLPServer):
            allow_reuse_address = True

        class Handler(AbstractHandler):
            def reply(self):
                m = parse_message(self.incoming_message, find_groups=False)
                control = m.msh.msh_10.to_er7()
                accession = m.obr.obr_3.to_er7() if m.obr else ""
                code = "AR" if accession in mis.refuse else "AA"
                with mis._lock:
                    mis.messages.append(self.incoming_message)
                return ("\x0b" + f"MSH|^~\\&|MIS|HOSP|KONTUR|LAMI|20261201000000||ACK^R01|A{control}|P|2.5\r"
                        f"MSA|{code}|{control}|{'refused by the test' if code == 'AR' else ''}\r" + "\x1c\r")

        # hl7apy routes by the whole of MSH-9
        self._server = Server("127.0.0.1", self.port, {"ORU^R01": (Handler,), "ORU^R01^ORU_R01": (Handler,)})
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list:
        """The messages as hl7apy reads them."""
        from hl7apy.parser import parse_message  # noqa: PLC0415
        with self._lock:
            return [parse_message(t, find_groups=False) for t in self.messages]
