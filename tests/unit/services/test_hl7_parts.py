"""The HL7 service's pure parts: MSH-18 decoding, what a message asks for,
where an order is scheduled, the ACK."""
from __future__ import annotations

import pytest

from kontur_hl7 import ack, codec, orders, worklist

SITE = worklist.Site.from_policy({
    "hospitals": [{"hospital": "onco", "facilities": ["ONCO"],
                   "devices": [{"aet": "ONCO_CT1", "modality": "CT", "station_names": ["CT-1"]},
                               {"aet": "ONCO_CT2", "modality": "CT"},
                               {"aet": "ONCO_MR1", "modality": "MR"}]}],
    "classifier": {"A06.09.005": "Компьютерная томография органов грудной полости"},
    "classifier_version": "2026-01"})


def orm(control="NW", *, msh18="UNICODE UTF-8", obr24="CT", ipc=None, accession="ACC1", name="Иванов^Пётр^Ильич",
        code="A06.09.005", cid="MSG1", facility="ONCO"):
    segs = [f"MSH|^~\\&|MIS|{facility}|KONTUR|LAMI|20261201120000||ORM^O01|{cid}|P|2.5||||||{msh18}",
            f"PID|1||12345^^^{facility}||{name}||19700101|M",
            f"ORC|{control}|P-{accession}|{accession}",
            f"OBR|1|P-{accession}|{accession}|{code}^^RU-804N||||||||||||||{accession}||||||{obr24}"]
    if ipc:
        segs.append(ipc)
    return "\r".join(segs) + "\r"


def test_msh18_decides_the_codec():
    text = orm(msh18="8859/5")
    d = codec.decode(text.encode("iso8859_5"))
    assert d.codec == "iso8859_5" and "Иванов" in d.text


def test_an_empty_msh18_reads_utf8_or_else_cp1251():
    assert codec.decode(orm(msh18="").encode("utf-8")).codec == "utf-8"
    d = codec.decode(orm(msh18="").encode("cp1251"))
    assert d.codec == "cp1251" and "Иванов^Пётр" in d.text


def test_a_label_that_lies_is_refused_naming_the_byte():
    with pytest.raises(codec.CodecError, match="not valid UNICODE UTF-8"):
        codec.decode(orm().encode("cp1251"))


def test_an_unknown_label_is_refused_with_the_ones_read():
    with pytest.raises(codec.CodecError, match="'EBCDIC' is not one"):
        codec.decode(orm(msh18="EBCDIC").encode())


def test_an_order_with_only_a_modality_type_goes_to_every_device_of_that_type():
    req = orders.parse(orm())
    hospital, work = worklist.plan(req, SITE)
    (order, devices), = work
    assert hospital.slug == "onco" and [d.aet for d in devices] == ["ONCO_CT1", "ONCO_CT2"]
    assert order.procedure_name == SITE.classifier["A06.09.005"]       # filled from the classifier
    assert req.patient.name == "Иванов^Пётр^Ильич" and req.patient.birth_date == "19700101"


def test_an_order_naming_a_device_or_station_goes_there_only():
    req = orders.parse(orm(ipc="IPC|ACC1||1.2.3.4|SPS1|CT||CT-1"))
    (_, devices), = worklist.plan(req, SITE)[1]
    assert [d.aet for d in devices] == ["ONCO_CT1"]
    req = orders.parse(orm(ipc="IPC|ACC1||||CT||||ONCO_MR1"))
    assert [d.aet for d in worklist.plan(req, SITE)[1][0][1]] == ["ONCO_MR1"]


@pytest.mark.parametrize("text,ack_code,code,words", [
    ("PID|1||1", "AR", 100, "does not start with an MSH"),
    (orm().replace("ORM^O01", "SIU^S12"), "AR", 200, "'SIU^S12' is not read here"),
    (orm(cid=""), "AR", 101, "MSH-10"),
    (orm().replace("PID|1||12345^^^ONCO||", "PID|1||||"), "AR", 101, "PID-3"),
    (orm(control="ZZ"), "AR", 103, "ORC-1"),
    (orm().split("\rORC")[0], "AR", 100, "no ORC"),
    (orm().replace("19700101", "01.01.1970"), "AE", 102, "PID-7"),
])
def test_bad_messages_are_refused_with_a_code_and_a_reason(text, ack_code, code, words):
    with pytest.raises(orders.Reject) as e:
        orders.parse(text)
    assert (e.value.ack, e.value.code) == (ack_code, code) and words in e.value.text


@pytest.mark.parametrize("text,words", [
    (orm(facility="GKB3"), "'GKB3' is not a hospital this node serves"),
    (orm(obr24="US"), "onco has no US modality"),
    (orm(ipc="IPC|ACC1||||CT||||XRAY9"), "device 'XRAY9' (IPC-9) is not a modality of onco"),
    (orm(code="B99.99"), "'B99.99' (OBR-4) is not in the regional classifier (version 2026-01)"),
])
def test_orders_that_cannot_be_placed_say_why(text, words):
    req = orders.parse(text)
    with pytest.raises(orders.Reject) as e:
        worklist.plan(req, SITE)
    assert words in e.value.text


def test_one_order_always_gets_one_study_uid():
    o = orders.parse(orm()).orders[0]
    assert worklist.study_uid(o, "ONCO") == worklist.study_uid(o, "ONCO") != worklist.study_uid(o, "GKB3")
    assert worklist.study_uid(o, "ONCO").startswith("2.25.")


def test_priority_stat_is_urgent():
    text = orm().replace("ORC|NW|P-ACC1|ACC1", "ORC|NW|P-ACC1|ACC1||||^^^20261201130000^^S")
    o = orders.parse(text).orders[0]
    assert o.priority == "STAT" and o.urgent and o.scheduled == "20261201130000"


def test_the_ack_answers_the_sender_with_its_control_id_and_the_reason():
    raw = orm(cid="X-42").encode()
    a = ack.build(raw, "AE", text="order ACC1 is not known | here", error=204, where="ORC^1^1").decode()
    segs = a.strip("\r").split("\r")
    msh, msa, err = (s.split("|") for s in segs)
    assert msh[2:6] == ["KONTUR", "LAMI", "MIS", "ONCO"] and msh[8] == "ACK^O01^ACK"
    assert msh[17] == "UNICODE UTF-8"                       # MSH-18: answered in the message's own charset
    assert msa[1:3] == ["AE", "X-42"] and msa[3] == "order ACC1 is not known \\F\\ here"
    assert err[3] == "204^Unknown key identifier^HL70357" and err[2] == "ORC^1^1"


def test_mpps_steps_start_in_progress_and_final_is_final():
    from kontur_hl7 import mpps
    with pytest.raises(mpps.MppsError) as e:
        mpps.created("1.2.3", {"status": "COMPLETED"}, "CT1")
    assert e.value.status == mpps.INVALID_VALUE and "created IN PROGRESS" in e.value.text
    step = mpps.created("1.2.3", {"status": "in progress", "accession": "A1"}, "CT1")
    done = mpps.updated(step, "1.2.3", {"status": "COMPLETED"}, "CT1")
    assert done.status == "COMPLETED" and done.accession == "A1"
    with pytest.raises(mpps.MppsError, match="COMPLETED already"):
        mpps.updated(done, "1.2.3", {"status": "DISCONTINUED"}, "CT1")
    with pytest.raises(mpps.MppsError, match="created by CT1, not CT2"):
        mpps.updated(step, "1.2.3", {"status": "COMPLETED"}, "CT2")
    with pytest.raises(mpps.MppsError) as e:
        mpps.updated(None, "9.9", {"status": "COMPLETED"}, "CT1")
    assert e.value.status == mpps.NO_SUCH_INSTANCE
