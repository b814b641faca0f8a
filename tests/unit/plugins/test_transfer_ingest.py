"""The received-instance stage (issue 10): Cyrillic repair and the issuer stamp,
on real DICOM bytes (pydicom 3 here; the nodes' pydicom 2.3 runs in
tests/orthanc/test_transfer_orthanc.py)."""
from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from kontur.testing.dicom import make_instance, with_raw_text
from kontur_plugins.transfer import charset, ingest

NAME = 0x00100010
INSTITUTION = 0x00080080
DESCRIPTION = 0x00081030


def instance(name="Placeholder^Name") -> bytes:
    return make_instance(patient_id="P1", patient_name=name, study_uid="1.2.3.4", series_uid="1.2.3.4.1",
                         study_description="CT chest").data


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize("codec", ["cp1251", "koi8_r"])
@pytest.mark.parametrize("label", [None, "ISO_IR 100", "ISO_IR 192"])
def test_cyrillic_in_an_eight_bit_code_comes_out_as_utf8(codec, label):
    raw = with_raw_text(instance(), {NAME: "Иванов^Пётр^Сергеевич".encode(codec),
                                     INSTITUTION: "Областная больница".encode(codec)}, charset=label)
    out = ingest.process(raw)
    assert out.error is None and out.data is not None, out
    ds = read(out.data)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Иванов^Пётр^Сергеевич"
    assert ds.InstitutionName == "Областная больница"
    assert out.original["0010,0010"].encode("latin_1").rstrip(b" ") == "Иванов^Пётр^Сергеевич".encode(codec)
    assert any(codec.upper().replace("_", "-") in c for c in out.changes)


def test_pixel_data_and_other_values_are_kept_byte_for_byte():
    raw = with_raw_text(instance(), {NAME: "Сидорова^Анна".encode("cp1251")})
    before = read(raw)
    after = read(ingest.process(raw).data)
    assert after.PixelData == before.PixelData
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "StudyDescription", "Rows", "Columns"):
        assert after.get(kw) == before.get(kw)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("name,label", [
    ("Müller^François", "ISO_IR 100"),
    ("Øyvind^Ødegård", "ISO_IR 100"),
    ("Иванов^Иван", "ISO_IR 192"),
    ("Smith^John", None),
    ("Јовановић^Марко", "ISO_IR 144"),
])
def test_correct_data_is_left_as_received(name, label):
    codec = {"ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8", "ISO_IR 144": "iso8859_5", None: "ascii"}[label]
    raw = with_raw_text(instance(), {NAME: name.encode(codec)}, charset=label)
    out = ingest.process(raw)
    assert out.data is None and out.changes == [] and out.error is None
    assert str(read(raw).PatientName) == name


def test_undeclared_utf8_is_relabelled_without_touching_the_bytes():
    raw = with_raw_text(instance(), {NAME: "Кузнецова^Мария".encode()})
    out = ingest.process(raw)
    ds = read(out.data)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and str(ds.PatientName) == "Кузнецова^Мария"
    assert out.original == {}


def test_text_inside_a_sequence_is_repaired_too():
    ds = read(instance())
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "A06.09", "RU-NMU", "placeholder"
    ds.ProcedureCodeSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    # the code meaning in CP1251, the name too, no character set
    ds = read(raw)
    seq_item = ds.ProcedureCodeSequence[0]
    meaning = "Компьютерная томография".encode("cp1251")
    seq_item._dict[pydicom.tag.BaseTag(0x00080104)] = pydicom.dataelem.RawDataElement(
        pydicom.tag.BaseTag(0x00080104), "LO", len(meaning), meaning, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = with_raw_text(buf.getvalue(), {NAME: "Попов^Олег".encode("cp1251")})
    out = ingest.process(raw)
    ds = read(out.data)
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "Компьютерная томография"
    assert "0008,1032[0]/0008,0104" in out.original


def test_the_devices_declared_encoding_replaces_the_guess():
    # a single upper-case word is where the guess is weakest: the inventory's text_encoding decides
    raw = with_raw_text(instance(), {NAME: "ЮДИН".encode("koi8_r")})
    out = ingest.process(raw, encoding="koi8_r")
    assert str(read(out.data).PatientName) == "ЮДИН"


def test_issuer_is_stamped_when_absent_and_kept_when_present():
    out = ingest.process(instance(), issuer="ONCO")
    assert read(out.data).IssuerOfPatientID == "ONCO"
    ds = read(instance())
    ds.IssuerOfPatientID = "OTHER"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = ingest.process(buf.getvalue(), issuer="ONCO")
    assert out.data is None


def test_what_pydicom_cannot_read_goes_on_unchanged_with_the_reason():
    out = ingest.process(b"\0" * 50 + b"not dicom at all", issuer="ONCO")
    assert out.data is None and out.error


# --- the guess itself, on real names of each kind --------------------------------------------

SURNAMES = ("Иванов Смирнова Кузнецов Попова Васильев Петров Соколова Михайлов Новиков Фёдоров Морозова "
            "Волков Алексеева Лебедев Семёнов Егорова Павлов Козлов Степанова Николаев Орлов Андреева "
            "Макаров Никитин Захарова Зайцев Соловьёв Борисова Яковлев Григорьев Щербаков Эдуардова Шишкин "
            "Жуков Цветкова Хохлов Чернышёв Юсупов Ящук Ли Ким Цой").split()


@pytest.mark.parametrize("codec", ["cp1251", "koi8_r"])
def test_the_guess_reads_real_names_right(codec):
    forms = [f"{s}^Анна^Сергеевна" for s in SURNAMES] + [f"{s.upper()}^ИВАН^ПЕТРОВИЧ" for s in SURNAMES]
    wrong = [f for f in forms if charset.decide([f.encode(codec)], None).source != codec]
    assert wrong == []


def test_latin1_words_are_not_taken_for_cyrillic():
    for name in ("Müller^Jürgen", "Françoise^Lefèvre", "José^Núñez", "Ærøskøbing^Søren", "Ström^Åsa"):
        v = charset.decide([name.encode("latin_1")], None)
        assert v.source == "latin_1", (name, v)
        assert charset.decide([name.encode("latin_1")], "ISO_IR 100").action == "keep"


def _as_syntax(data: bytes, syntax: str) -> bytes:
    from pydicom.uid import UID
    ds = read(data)
    ts = UID(syntax)
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=ts.is_implicit_VR, little_endian=ts.is_little_endian,
                     force_encoding=True)
    return buf.getvalue()


@pytest.mark.parametrize("syntax", [
    "1.2.840.10008.1.2",        # implicit VR little endian (the DICOM default)
    "1.2.840.10008.1.2.1",      # explicit VR little endian
    "1.2.840.10008.1.2.2",      # explicit VR big endian (pydicom writes it)
    "1.2.840.10008.1.2.1.99",   # deflated (pydicom writes it)
])
def test_every_uncompressed_syntax_comes_out_right(syntax):
    raw = _as_syntax(with_raw_text(instance(), {NAME: "Фёдорова^Ольга".encode("koi8_r")}), syntax)
    out = ingest.process(raw, issuer="42-ONCO")
    assert out.error is None and out.data is not None
    before, after = read(raw), read(out.data)
    assert str(after.PatientName) == "Фёдорова^Ольга" and after.IssuerOfPatientID == "42-ONCO"
    assert after.SpecificCharacterSet == "ISO_IR 192"
    assert after.PixelData == before.PixelData
    assert after.file_meta.TransferSyntaxUID == syntax


def test_the_fast_path_splices_and_leaves_every_other_byte():
    raw = instance()
    out = ingest.process(raw, issuer="42-ONCO")
    added = len(out.data) - len(raw)
    assert added == 8 + len(b"42-ONCO ")           # one LO element: header 8 bytes, value padded even
    # everything before and after the inserted element is the received bytes
    at = next(i for i in range(len(raw)) if raw[i] != out.data[i])
    assert out.data[:at] == raw[:at] and out.data[at + added:] == raw[at:]


def test_text_in_a_sequence_takes_the_slow_path_and_is_still_right():
    ds = read(instance())
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "A06.09.005", "RU", "x"
    ds.ProcedureCodeSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    ds = read(buf.getvalue())
    meaning = "КТ грудной клетки".encode("cp1251")
    ds.ProcedureCodeSequence[0]._dict[pydicom.tag.BaseTag(0x00080104)] = pydicom.dataelem.RawDataElement(
        pydicom.tag.BaseTag(0x00080104), "LO", len(meaning), meaning, 0, False, True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = ingest.process(buf.getvalue(), issuer="42-ONCO")
    after = read(out.data)
    assert after.ProcedureCodeSequence[0].CodeMeaning == "КТ грудной клетки"
    assert after.IssuerOfPatientID == "42-ONCO"


CORPUS = Path(pydicom.__file__).parent / "data" / "test_files"


def _summary(data: bytes | None) -> dict | None:
    if data is None:
        return None
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    return {str(e.tag): (e.VR, e.value if e.VR != "SQ" else len(e.value)) for e in ds.iterall()
            if e.tag != 0x7FE00010} | {"pixels": ds.get("PixelData")}


@pytest.mark.parametrize("path", sorted(p for p in CORPUS.rglob("*.dcm")), ids=lambda p: p.name)
def test_the_fast_path_and_pydicom_agree_on_every_corpus_file(path):
    data = path.read_bytes()
    legacy = data
    for issuer in ("42-ONCO", None):
        fast = ingest.process(legacy, issuer=issuer)
        slow = ingest.process(legacy, issuer=issuer, fast=False)
        assert (fast.error is None) == (slow.error is None) or fast.error is None
        if slow.error is None:
            assert fast.changes == slow.changes
            assert _summary(fast.data) == _summary(slow.data)


def test_the_fast_path_takes_most_of_the_corpus():
    """The scan is not a stub that always declines: most little-endian files go through it."""
    from kontur_plugins.transfer import scan
    files = sorted(CORPUS.rglob("*.dcm"))
    taken = [f for f in files if (h := scan.scan(f.read_bytes())) is not None
             and ingest._fast(f.read_bytes(), h, "42-ONCO", None, True) is not None]
    assert len(taken) >= len(files) // 2, (len(taken), len(files))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"])
def test_a_regional_patient_key_keeps_the_hospitals_own_id_beside_it(syntax):
    raw = _as_syntax(instance(), syntax)
    for fast in (True, False):
        out = ingest.process(raw, issuer="42-ONCO", patient_key="regional", fast=fast)
        ds = read(out.data)
        assert ds.PatientID == "42-ONCO:P1" and ds.IssuerOfPatientID == "42-ONCO"
        (other,) = ds.OtherPatientIDsSequence
        assert (other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID) == ("P1", "42-ONCO", "TEXT")
        assert ds.PixelData == read(raw).PixelData
        tags = [int(e.tag) for e in ds]
        assert tags == sorted(tags)
        # idempotent: a second pass (a gateway's, a re-ingest after modify) changes nothing
        again = ingest.process(out.data, issuer="42-ONCO", patient_key="regional", fast=fast)
        assert again.data is None and again.changes == []


def test_a_patient_id_of_another_issuer_keeps_that_issuer_in_its_key():
    ds = read(instance())
    ds.IssuerOfPatientID = "42-GKB3"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out = ingest.process(buf.getvalue(), issuer="42-ONCO", patient_key="regional")
    assert read(out.data).PatientID == "42-GKB3:P1"
