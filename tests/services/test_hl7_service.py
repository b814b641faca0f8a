"""The HL7 service as a real process: Debian's python3 and python3-hl7, as on
a node, on loopback.  The MIS side is libraries the service does not use for
the job: python-hl7's MLLP client (the service frames MLLP itself) and hl7apy
to read the ACKs (the service parses with python-hl7); raw sockets for what
no library would send."""
from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
from hl7apy.parser import parse_message

from kontur.testing.hl7 import SITE, Hl7Service, orm, oru
from kontur.testing.orthanc import wait_for

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


@pytest.fixture
def service(tmp_path, backend):
    s = Hl7Service(tmp_path, **backend)
    s.start()
    yield s
    s.stop(signal.SIGKILL)


def unescape(er7: str) -> str:
    """HL7's escapes (v2.5 §2.7) back to their characters."""
    for seq, ch in (("\\F\\", "|"), ("\\S\\", "^"), ("\\T\\", "&"), ("\\R\\", "~"), ("\\E\\", "\\")):
        er7 = er7.replace(seq, ch)
    return er7


def msa(answer) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK, read by hl7apy."""
    text = answer.decode("utf-8") if isinstance(answer, bytes) else answer
    m = parse_message(text.strip("\x0b\x1c\r"), find_groups=False)
    return (m.msa.msa_1.to_er7(), m.msa.msa_2.to_er7(), unescape(m.msa.msa_3.to_er7()) if m.msa.msa_3 else "")


def framed(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    buf = b""
    while not buf.endswith(FS + CR):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_an_order_becomes_worklist_items_on_every_device_of_its_type(service):
    with service.client() as c:
        code, control, text = msa(c.send_message(orm(cid="M1")))
    assert (code, control) == ("AA", "M1") and "ONCO_CT1, ONCO_CT2" in text
    items = service.items()
    assert [i["aet"] for i in items] == ["ONCO_CT1", "ONCO_CT2"]
    assert items[0]["patient"]["name"] == "Иванов^Пётр^Ильич"
    assert items[0]["procedure_name"] == SITE["classifier"]["A06.09.005"]


def test_the_same_message_twice_gets_the_first_ack_not_a_second_order(service):
    with service.client() as c:
        first = c.send_message(orm(cid="M1"))
        again = c.send_message(orm(cid="M1"))
    assert first == again and msa(first)[0] == "AA"
    with service.db() as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM orders").fetchone()[0] == 1


def test_a_change_before_its_order_is_refused_then_the_order_and_the_change_go(service):
    with service.client() as c:
        code, _, text = msa(c.send_message(orm("XO", cid="M1")))
        assert code == "AE" and "order ACC1 is not known here" in text
        assert msa(c.send_message(orm("NW", cid="M2")))[0] == "AA"
        assert msa(c.send_message(orm("XO", cid="M3", obr24="MR")))[0] == "AA"
    assert [i["aet"] for i in service.items("SCHEDULED")] == ["ONCO_MR1"]
    with service.db() as db:                # the refused change is kept, with its reason
        row = db.execute("SELECT ack_code, reason, raw FROM messages WHERE control_id='M1'").fetchone()
    assert row["ack_code"] == "AE" and "not known" in row["reason"] and b"ORC|XO" in bytes(row["raw"])


def test_cancel_removes_the_item_and_a_cancel_of_nothing_is_refused(service):
    with service.client() as c:
        code, _, text = msa(c.send_message(orm("CA", cid="M0", accession="NOPE")))
        assert code == "AE" and "order NOPE is not known here" in text
        c.send_message(orm(cid="M1"))
        assert msa(c.send_message(orm("CA", cid="M2")))[0] == "AA"
    assert service.items("SCHEDULED") == [] and {i["status"] for i in service.items()} == {"CANCELLED"}


def test_a_cp1251_message_with_an_empty_charset_keeps_its_cyrillic(service):
    with service.client(encoding="cp1251") as c:
        answer = c.send_message(orm(cid="M1", msh18="").encode("cp1251"))
    assert msa(answer.decode("cp1251").encode())[0] == "AA"
    assert service.items()[0]["patient"]["name"] == "Иванов^Пётр^Ильич"


def test_demographic_updates_and_merges_follow_the_mis(service):
    a08 = "\r".join(["MSH|^~\\&|MIS|ONCO|KONTUR|LAMI|20261201120500||ADT^A08|M2|P|2.5||||||UNICODE UTF-8",
                     "PID|1||12345^^^ONCO||Петрова^Анна^Ивановна||19700101|F"]) + "\r"
    a40 = "\r".join(["MSH|^~\\&|MIS|ONCO|KONTUR|LAMI|20261201121000||ADT^A40^ADT_A39|M3|P|2.5||||||UNICODE UTF-8",
                     "PID|1||777^^^ONCO||Петрова^Анна^Ивановна||19700101|F", "MRG|12345^^^ONCO"]) + "\r"
    with service.client() as c:
        c.send_message(orm(cid="M1"))
        assert msa(c.send_message(a08))[0] == "AA"
        assert {i["patient"]["name"] for i in service.items()} == {"Петрова^Анна^Ивановна"}
        assert msa(c.send_message(a40))[0] == "AA"
    assert {i["patient"]["id"] for i in service.items()} == {"777"}


@pytest.mark.parametrize("message,ack_code,words", [
    (b"PID|1||12345||X\r", "AR", "does not start with an MSH"),
    (orm(cid="B1").replace("ORM^O01", "SIU^S12").encode(), "AR", "'SIU^S12' is not read here"),
    # a PID cut mid-field, the rest of the message lost
    (orm(cid="B2").split("PID|1||12345^^^ONCO||Иван")[0].encode() + "PID|1||12345^^^ONCO||Иван".encode(),
     "AR", "no ORC segment"),
    (orm(cid="B3", code="B99.99").encode(), "AE", "'B99.99' (OBR-4) is not in the regional classifier"),
    (orm(cid="B4").encode("cp1251"), "AR", "not valid UNICODE UTF-8"),
    # a result with a broken OBX (no value type), and one with no text at all
    (oru(cid="B6").replace("OBX|1|TX|", "OBX|1||").encode(), "AR", "OBX 1 has no value type (OBX-2)"),
    (oru(cid="B7").replace("|TX|", "|NM|").encode(), "AR", "no OBX carries text"),
    # a NUL byte: no HL7 character set has it, and PostgreSQL's text refuses it
    (orm(cid="B5", name="Иванов\x00^Пётр").encode(), "AR", "NUL byte (0x00) at offset"),
])
def test_bad_messages_get_the_right_nak_and_the_next_message_is_answered(service, message, ack_code, words):
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as s:
        answer = framed(s, VT + message + FS + CR)
        code, _, text = msa(answer.decode("utf-8", "replace"))
        assert code == ack_code and words in text, text
        assert msa(framed(s, VT + orm(cid="NEXT").encode() + FS + CR))[0] == "AA"
    with service.db() as db:                # the bad message is kept with its reason
        assert db.execute("SELECT count(*) FROM messages WHERE ack_code=?", (ack_code,)).fetchone()[0] == 1
    # and logged with its control ID (and nothing of the patient)
    control = message.split(b"|")[9].decode() if message.startswith(b"MSH") else "(no control ID)"
    wait_for(lambda: f"message {control} from" in service.log.read_text(), 30, message="the refusal logged")
    assert "Иван" not in service.log.read_text()


def test_bytes_outside_a_frame_are_dropped_and_the_stream_goes_on(service):
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as s:
        answer = framed(s, b"garbage with no frame\r" + VT + orm(cid="M1").encode() + FS + CR)
    assert msa(answer)[:2] == ("AA", "M1")
    wait_for(lambda: "before <VT> dropped" in service.log.read_text(), 30, message="the dropped bytes logged")


def test_a_10_mb_message_is_refused_kept_and_the_connection_goes_on(service):
    big = orm(cid="BIG").encode() + b"NTE|1||" + b"x" * (10 * 1024 * 1024) + b"\r"
    with socket.create_connection(("127.0.0.1", service.port), timeout=60) as s:
        code, control, text = msa(framed(s, VT + big + FS + CR))
        assert (code, control) == ("AR", "BIG") and "at most 1048576" in text
        assert msa(framed(s, VT + orm(cid="NEXT").encode() + FS + CR))[0] == "AA"
    with service.db() as db:
        assert len(db.execute("SELECT raw FROM messages WHERE control_id='BIG'").fetchone()[0]) == 64 * 1024


def test_a_client_that_sends_nothing_is_disconnected_and_others_are_served(tmp_path):
    s = Hl7Service(tmp_path, idle=1)
    s.start()
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as silent:
            assert silent.recv(10) == b""          # the service hung up on it
        # the service's stderr reaches the file through the fixture's reader: wait for the line
        wait_for(lambda: "nothing received for 1 s; disconnected" in s.log.read_text(), 30,
                 message="the idle line in the service's log")
        with s.client() as c:
            assert msa(c.send_message(orm(cid="M1")))[0] == "AA"
    finally:
        s.stop(signal.SIGKILL)


def test_an_acknowledged_order_survives_kill_9(service):
    with service.client() as c:
        assert msa(c.send_message(orm(cid="M1")))[0] == "AA"
    service.stop(signal.SIGKILL)
    service.start()
    assert len(service.items("SCHEDULED")) == 2
    with service.client() as c:                 # and its duplicate is still known
        assert msa(c.send_message(orm(cid="M1")))[0] == "AA"
    with service.db() as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 1


def test_a_message_while_postgresql_is_down_is_not_acknowledged_and_goes_when_it_is_back(tmp_path):
    """The state in PostgreSQL (a LAMI): with the server stopped a message is
    answered AE "not accepted -- send it again" (never AA); once the server
    is back, the service reconnects by itself and the same message goes."""
    import os
    import shutil
    import tempfile

    from kontur.testing.postgres import PostgresProcess
    where = Path(tempfile.mkdtemp(prefix="kontur-hl7-pgdown-"))
    os.chmod(where, 0o711)
    pg = PostgresProcess(where / "pg").start()
    s = Hl7Service(tmp_path, postgres=pg)
    try:
        s.start()
        with s.client() as c:
            assert msa(c.send_message(orm(cid="D1", accession="ACC1")))[0] == "AA"
            pg.stop()
            code, _, text = msa(c.send_message(orm(cid="D2", accession="ACC2")))
            assert code == "AE" and "not accepted -- send it again" in text, text
            pg.start()
            assert msa(c.send_message(orm(cid="D2", accession="ACC2")))[0] == "AA"
        assert sorted({i["accession"] for i in s.items("SCHEDULED")}) == ["ACC1", "ACC2"]
        assert "Traceback" not in s.log.read_text()
        assert "not stored: PostgreSQL database" in s.log.read_text()
    finally:
        s.stop(signal.SIGKILL)
        pg.remove()
        shutil.rmtree(where, ignore_errors=True)


def test_a_result_coded_with_a_declared_pathology_code_is_pathology_without_a_flag(service):
    """The hospital's ``mis.pathology_codes`` (the inventory) flag a result whose
    OBX-8 says nothing; another code does not."""
    coded = "OBX|3|CE|121071^Finding^DCM||{}^Находка^ICD10"
    with service.client() as c:
        assert msa(c.send_message(orm(cid="M1", accession="ACC1")))[0] == "AA"
        assert msa(c.send_message(orm(cid="M2", accession="ACC2")))[0] == "AA"
        code, _, text = msa(c.send_message(oru(cid="R1", accession="ACC1", extra=[coded.format("C34.1")])))
        assert code == "AA" and "pathology" in text, text
        code, _, text = msa(c.send_message(oru(cid="R2", accession="ACC2", extra=[coded.format("C50.9")])))
        assert code == "AA" and "pathology" not in text, text
    with service.db() as db:
        rows = db.execute("SELECT accession, pathology FROM results ORDER BY accession").fetchall()
    assert [(r["accession"], r["pathology"]) for r in rows] == [("ACC1", 1), ("ACC2", 0)]


def test_a_cp1251_result_with_an_empty_charset_keeps_its_cyrillic_and_survives_kill_9(service):
    """A result (issue 12) is kept before its ACK: CP1251 with an empty MSH-18
    read right, and still there, waiting for its study, after kill -9."""
    import json
    with service.client() as c:
        assert msa(c.send_message(orm(cid="M1")))[0] == "AA"
    raw = oru(cid="R1", msh18="", conclusion="Образование правого лёгкого.", flag="A").encode("cp1251")
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as s:
        code, control, text = msa(framed(s, VT + raw + FS + CR).decode("cp1251"))
    assert (code, control) == ("AA", "R1") and "pathology" in text, text
    service.stop(signal.SIGKILL)
    service.start()
    with service.db() as db:
        row = db.execute("SELECT state, pathology, report FROM results").fetchone()
    report = json.loads(row["report"])
    assert (row["state"], row["pathology"]) == ("waiting", 1)
    assert report["conclusion"] == "Образование правого лёгкого." and report["observer"] == "Сидоров^Алексей^Петрович"
    with service.client() as c:                 # the same message again: its first ACK, no second result
        assert msa(c.send_message(oru(cid="R1", msh18="", conclusion="Образование правого лёгкого.", flag="A")))[0] \
            == "AA"
    with service.db() as db:
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 1
