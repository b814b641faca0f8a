# SPDX-License-Identifier: AGPL-3.0-or-later
"""The research feed's test corpus and an independent leak scanner (issue 16).

:func:`build_corpus` makes synthetic patients whose identity is planted in
many places -- top-level attributes, sequences, private elements, SR text,
an encapsulated document -- across CT, MR, US, SR, SC and DOC instances, in
Cyrillic (UTF-8 and ISO 8859-5) and in Latin.  Every planted value is listed.

:func:`raw_leaks` is written apart from the exporter's scanner on purpose: it
parses nothing.  It looks for every planted value's bytes -- in UTF-8,
CP1251, KOI8-R and ISO 8859-5, in upper, lower and title case, each name's
parts alone -- anywhere in the delivered file.  The pixels are bytes below
0x20, so no text is found in them by chance; digits are searched only as long runs
(a whole phone number, a date), which a 2.25 UID does not hold by chance.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT, MR, US = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.6.1"
SC, SR, PDF = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.104.1"
ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass
class Patient:
    key: str
    name: str                       # as the hospital writes it (Cyrillic or Latin)
    latin: str                      # a transliteration planted too
    birth: str
    phone: str
    address: str
    enp: str | None = None          # the insurance policy number (the region's linking identifier)


@dataclass
class Item:
    hospital: str
    study: str                      # corpus study key
    kind: str                       # CT MR US SR SC DOC
    data: bytes
    sop_uid: str
    expect: str                     # "delivered" or "held"


@dataclass
class Corpus:
    items: list[Item] = field(default_factory=list)
    #: (where, kind, value): every planted identifying value; kind is name, id, date, phone or place
    planted: list[tuple[str, str, str]] = field(default_factory=list)
    uids: set[str] = field(default_factory=set)
    patients: dict[str, Patient] = field(default_factory=dict)
    #: corpus study key -> (hospital, patient key, local patient ID)
    studies: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def plant(self, where: str, kind: str, value: str) -> None:
        self.planted.append((where, kind, value))


STAFF = {"referring": "Кузнецов^Андрей^Викторович", "performing": "Sokolova^Elena",
         "operator": "Морозов^Игорь", "reading": "Волкова^Ольга^Петровна", "requesting": "Лебедев^Денис",
         "creator": "Новиков^Максим", "verifier": "Федоров^Сергей", "record": "Орлова^Наталья"}
INSTITUTION = "ГБУЗ Кузбасский онкодиспансер"
INSTITUTION_ADDRESS = "г. Кемерово, ул. Волгоградская, д. 35"
DEPARTMENT = "Лучевая диагностика Кировская"
ISSUERS = {"onco": "42-ONCO", "gkb3": "42-GKB3", "perinatal": "42-PERINATAL"}


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _pixels(ds: Dataset, rows: int = 8, cols: int = 8) -> None:
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes((i % 16) + 1 for i in range(rows * cols * 2))


class _Builder:
    def __init__(self, corpus: Corpus):
        self.c = corpus

    def base(self, *, hospital: str, study: str, patient: Patient, pid: str, sop_class: str, modality: str,
             study_uid: str, series_uid: str, charset: str = "ISO_IR 192", name: str | None = None,
             full: bool = True) -> Dataset:
        c, p = self.c, self.plant_for(hospital, study)
        sop = generate_uid(prefix=ROOT)
        c.uids |= {sop, study_uid, series_uid}
        ds = Dataset()
        ds.file_meta = _meta(sop_class, sop)
        ds.SpecificCharacterSet = charset
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality = modality
        ds.PatientName = p("Patient's Name", name or patient.name)
        ds.PatientID = p("Patient ID", pid, "id")
        ds.IssuerOfPatientID = ISSUERS[hospital]
        ds.PatientBirthDate = p("Patient's Birth Date", patient.birth, "date")
        ds.PatientSex = "M"
        ds.StudyDate, ds.SeriesDate, ds.StudyTime = "20260310", "20260310", "101500"
        ds.AccessionNumber = p("Accession Number", f"ACC{pid[-5:]}{modality}", "id")
        ds.StudyID = p("Study ID", f"S{pid[-5:]}", "id")
        ds.StudyDescription = p("Study Description", f"КТ груди {patient.name.split('^')[0]}", needle=patient.name.split('^')[0])
        ds.SeriesNumber, ds.InstanceNumber = 1, 1
        ds.BodyPartExamined = "CHEST"
        if patient.enp:
            item = Dataset()
            item.PatientID = p("Other Patient IDs Sequence", patient.enp, "id")
            item.IssuerOfPatientID = "ENP"
            ds.OtherPatientIDsSequence = Sequence([item])
        if not full:
            return ds
        ds.OtherPatientNames = p("Other Patient Names", patient.latin)
        ds.PatientMotherBirthName = p("Patient's Mother's Birth Name", "Смирнова^Галина")
        ds.PatientAddress = p("Patient's Address", patient.address, "place")
        ds.PatientTelephoneNumbers = p("Patient's Telephone Numbers", patient.phone, "phone")
        ds.PatientAge = "068Y"
        ds.InstitutionName = p("Institution Name", INSTITUTION, "place")
        ds.InstitutionAddress = p("Institution Address", INSTITUTION_ADDRESS, "place")
        ds.InstitutionalDepartmentName = p("Institutional Department Name", DEPARTMENT, "place")
        ds.ReferringPhysicianName = p("Referring Physician's Name", STAFF["referring"])
        ds.ReferringPhysicianTelephoneNumbers = p("Referring Physician's Telephone Numbers", "+73842777000", "phone")
        ds.PerformingPhysicianName = p("Performing Physician's Name", STAFF["performing"])
        ds.OperatorsName = p("Operators' Name", STAFF["operator"])
        ds.NameOfPhysiciansReadingStudy = p("Name of Physician(s) Reading Study", STAFF["reading"])
        ds.PhysiciansOfRecord = p("Physician(s) of Record", STAFF["record"])
        ds.RequestingPhysician = p("Requesting Physician", STAFF["requesting"])
        ds.StationName = p("Station Name", "ONCO-CT-KAB7", "id")
        ds.DeviceSerialNumber = p("Device Serial Number", "SN-99887766", "id")
        ds.SeriesDescription = p("Series Description", f"Серия {patient.latin.split('^')[0]}", needle=patient.latin.split('^')[0])
        ds.ProtocolName = p("Protocol Name", f"Протокол {patient.name.split('^')[0]}", needle=patient.name.split('^')[0])
        ds.ImageComments = p("Image Comments", f"Повтор, тел. {patient.phone}", "phone", patient.phone)
        ds.AdditionalPatientHistory = p("Additional Patient History", f"Со слов {patient.name.split('^')[1]}", needle=patient.name.split('^')[1])
        ds.PatientComments = p("Patient Comments", f"Звонить {patient.phone}", "phone", patient.phone)
        ds.DerivationDescription = p("Derivation Description", f"{patient.latin.split('^')[0]} recon", needle=patient.latin.split('^')[0])
        ds.PerformedProcedureStepDescription = p("Performed Procedure Step Description",
                                                 f"КТ {patient.name.split('^')[0]}", needle=patient.name.split('^')[0])
        ds.MilitaryRank = "капитан запаса"
        ds.Occupation = "инженер"
        ds.FrameOfReferenceUID = generate_uid(prefix=ROOT)
        c.uids.add(ds.FrameOfReferenceUID)
        req = Dataset()
        req.RequestedProcedureDescription = p("Request Attributes Sequence",
                                              f"КТ от {STAFF['requesting'].split('^')[0]}",
                                              needle=STAFF['requesting'].split('^')[0])
        req.RequestedProcedureID = p("Request Attributes Sequence (ID)", f"RP{pid[-5:]}", "id")
        ds.RequestAttributesSequence = Sequence([req])
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = generate_uid(prefix=ROOT)
        c.uids.add(ref.ReferencedSOPInstanceUID)
        ref.PatientName = p("Referenced Image Sequence (a name smuggled in)", patient.latin)
        ref.add_new(0x00110010, "LO", "ACME 1.0")
        ref.add_new(0x00111001, "LO", p("private element in a sequence", patient.phone, "phone"))
        ds.ReferencedImageSequence = Sequence([ref])
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "A06.09.005", "NMU", "КТ органов грудной полости"
        ds.ProcedureCodeSequence = Sequence([code])
        ds.add_new(0x00090010, "LO", "ACME 1.0")
        ds.add_new(0x00091001, "LO", p("private element (LO)", patient.name))
        ds.add_new(0x00091002, "OB", p("private element (OB)", pid, "id").encode())
        ds.add_new(0x00190010, "LO", "KONTUR_SAFE")
        ds.add_new(0x00191001, "DS", "2.5")
        return ds

    def plant_for(self, hospital: str, study: str):
        seen = {w for w, _, _ in self.c.planted}

        def p(where: str, value: str, kind: str = "name", needle: str | None = None) -> str:
            """``value`` set at ``where``; ``needle`` (default: the value) is the identity in it"""
            label = f"{study}: {where}"
            if label not in seen:
                self.c.plant(label, kind, needle or value)
                seen.add(label)
            return value
        return p

    def add(self, hospital: str, study: str, kind: str, ds: Dataset, expect: str) -> None:
        self.c.items.append(Item(hospital, study, kind, _bytes(ds), str(ds.SOPInstanceUID), expect))


def build_corpus() -> Corpus:
    c = Corpus()
    b = _Builder(c)
    ivanov = Patient("ivanov", "Иванов^Пётр^Сергеевич", "IVANOV^PETR^SERGEEVICH", "19580317",
                     "+7(3842)551234", "г. Новокузнецк, ул. Весенняя, д. 5, кв. 12", enp="4250000012345678")
    petrova = Patient("petrova", "Петрова^Анна^Олеговна", "PETROVA^ANNA", "19800704", "8-913-400-7766",
                      "г. Прокопьевск, пр. Шахтёров, д. 17")
    smith = Patient("smith", "Smith^John", "SMITH^JOHN", "19751120", "+442079460958", "221B Baker Street, London")
    c.patients = {p.key: p for p in (ivanov, petrova, smith)}

    # S1: onco, Ivanov: CT x3, an SR, a secondary capture (no Burned In Annotation), a PDF
    s1, ser = generate_uid(prefix=ROOT), generate_uid(prefix=ROOT)
    c.studies["S1"] = ("onco", "ivanov", "ONCO-55101")
    for n in range(3):
        ds = b.base(hospital="onco", study="S1", patient=ivanov, pid="ONCO-55101", sop_class=CT, modality="CT",
                    study_uid=s1, series_uid=ser)
        ds.InstanceNumber = n + 1
        _pixels(ds)
        b.add("onco", "S1", "CT", ds, "delivered")
    sr = b.base(hospital="onco", study="S1", patient=ivanov, pid="ONCO-55101", sop_class=SR, modality="SR",
                study_uid=s1, series_uid=generate_uid(prefix=ROOT), full=False)
    sr.ValueType, sr.CompletionFlag, sr.VerificationFlag = "CONTAINER", "COMPLETE", "VERIFIED"
    sr.ContentDate, sr.ContentTime = "20260311", "120000"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic Imaging Report"
    sr.ConceptNameCodeSequence = Sequence([title])
    p = b.plant_for("onco", "S1")
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = Sequence([title])
    text.TextValue = (f"Пациент Иванов П.С., {ivanov.latin.split('^')[0].title()}, тел. {ivanov.phone}, "
                      f"д.р. 17.03.1958: очаг в S6 14 мм")
    p("SR text (the surname)", "", needle="Иванов")
    p("SR text (the surname in Latin)", "", needle=ivanov.latin.split("^")[0].title())
    p("SR text (the phone)", "", "phone", ivanov.phone)
    p("SR text (the birth date)", "", "date", "17.03.1958")
    person = Dataset()
    person.RelationshipType, person.ValueType = "HAS OBS CONTEXT", "PNAME"
    person.ConceptNameCodeSequence = Sequence([title])
    person.PersonName = p("SR person name", STAFF["reading"])
    when = Dataset()
    when.RelationshipType, when.ValueType = "HAS OBS CONTEXT", "DATETIME"
    when.ConceptNameCodeSequence = Sequence([title])
    when.DateTime = "20260311120000"
    sr.ContentSequence = Sequence([text, person, when])
    obs = Dataset()
    obs.VerifyingObserverName = p("Verifying Observer Name", STAFF["verifier"])
    obs.VerifyingOrganization = p("Verifying Organization", INSTITUTION, "place")
    obs.VerificationDateTime = "20260311130000"
    sr.VerifyingObserverSequence = Sequence([obs])
    sr.ContentCreatorName = p("Content Creator's Name", STAFF["creator"])
    b.add("onco", "S1", "SR", sr, "delivered")
    sc = b.base(hospital="onco", study="S1", patient=ivanov, pid="ONCO-55101", sop_class=SC, modality="OT",
                study_uid=s1, series_uid=generate_uid(prefix=ROOT), full=False)
    _pixels(sc)
    b.add("onco", "S1", "SC", sc, "held")
    doc = b.base(hospital="onco", study="S1", patient=ivanov, pid="ONCO-55101", sop_class=PDF, modality="DOC",
                 study_uid=s1, series_uid=generate_uid(prefix=ROOT), full=False)
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    doc.DocumentTitle = "Направление"
    doc.EncapsulatedDocument = (b"%PDF-1.4\n% " + f"Направление: {ivanov.name} {ivanov.birth}".encode() + b"\n%%EOF\n")
    b.add("onco", "S1", "DOC", doc, "held")

    # S2: onco, Petrova: MR x2 in ISO 8859-5; a US with Burned In Annotation NO, one without
    s2, ser = generate_uid(prefix=ROOT), generate_uid(prefix=ROOT)
    c.studies["S2"] = ("onco", "petrova", "ONCO-55102")
    for n in range(2):
        ds = b.base(hospital="onco", study="S2", patient=petrova, pid="ONCO-55102", sop_class=MR, modality="MR",
                    study_uid=s2, series_uid=ser, charset="ISO_IR 144")
        ds.InstanceNumber = n + 1
        _pixels(ds)
        b.add("onco", "S2", "MR", ds, "delivered")
    us_ser = generate_uid(prefix=ROOT)
    for burned, expect in (("NO", "delivered"), (None, "held")):
        us = b.base(hospital="onco", study="S2", patient=petrova, pid="ONCO-55102", sop_class=US, modality="US",
                    study_uid=s2, series_uid=us_ser, full=False)
        if burned:
            us.BurnedInAnnotation = burned
        _pixels(us)
        b.add("onco", "S2", "US", us, expect)

    # S3: gkb3, Ivanov again (another local ID, a Latin name, the same ENP): one pseudonym with S1
    s3 = generate_uid(prefix=ROOT)
    c.studies["S3"] = ("gkb3", "ivanov", "GKB3-9001")
    ds = b.base(hospital="gkb3", study="S3", patient=ivanov, pid="GKB3-9001", sop_class=CT, modality="CT",
                study_uid=s3, series_uid=generate_uid(prefix=ROOT), name=ivanov.latin)
    ds.StudyDescription = "CT chest IVANOV"
    _pixels(ds)
    b.add("gkb3", "S3", "CT", ds, "delivered")

    # S4: perinatal, Smith: not selected by the feed (untouched, never delivered)
    s4 = generate_uid(prefix=ROOT)
    c.studies["S4"] = ("perinatal", "smith", "PERI-3003")
    ds = b.base(hospital="perinatal", study="S4", patient=smith, pid="PERI-3003", sop_class=CT, modality="CT",
                study_uid=s4, series_uid=generate_uid(prefix=ROOT))
    _pixels(ds)
    b.add("perinatal", "S4", "CT", ds, "untouched")
    return c


ENCODINGS = ("utf-8", "cp1251", "koi8_r", "iso8859_5")


def _variants(kind: str, value: str) -> set[str]:
    out = {value}
    if kind == "name":
        out |= {x for x in value.replace("^", " ").split() if len(x) >= 3}
    elif kind == "place":
        out |= {x.strip(",.") for x in value.split() if len(x.strip(",.")) >= 6}
    elif kind == "phone":
        out.add("".join(ch for ch in value if ch.isdigit()))
    elif kind == "date":
        d = "".join(ch for ch in value if ch.isdigit())
        if len(d) == 8 and "." in value:                        # DD.MM.YYYY as written
            d = d[4:] + d[2:4] + d[:2]
        out |= {d, f"{d[6:]}.{d[4:6]}.{d[:4]}", f"{d[:4]}-{d[4:6]}-{d[6:]}"}
    cased = set()
    for v in out:
        cased |= {v, v.upper(), v.lower(), v.title()}
    return cased


#: words of the institution's names that are not identity on their own
NOT_SEARCHED = {"Кузбасский", "онкодиспансер", "Кемерово", "Лучевая", "диагностика"}


def raw_leaks(data: bytes, corpus: Corpus, *, only: set[str] | None = None) -> list[str]:
    """Every planted value (or part of one) whose bytes are in ``data``, and every original UID."""
    found = []
    for where, kind, value in corpus.planted:
        for v in sorted(_variants(kind, value)):
            if v in NOT_SEARCHED or v.title() in NOT_SEARCHED or v.lower() in NOT_SEARCHED:
                continue
            for enc in ENCODINGS:
                try:
                    needle = v.encode(enc)
                except UnicodeEncodeError:
                    continue
                if needle in data:
                    found.append(f"{where}: {v!r} ({enc})")
                    break
    for uid in corpus.uids:
        if uid.encode() in data:
            found.append(f"original UID {uid}")
    return found
