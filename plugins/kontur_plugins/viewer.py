# SPDX-License-Identifier: AGPL-3.0-or-later
"""The page behind the viewer URL the MIS keeps (issue 12; reglament 004
§4.2-4.3): ``/kontur/view/PATIENT/ACCESSION/STUDY-UID`` shows that study's
series as images and its report.  Pure: the checks of the URL's values, the
match of the stored study, and the HTML; the glue reads Orthanc.

The URL names the patient, the order and the performed study; the page is
shown only when the stored study with that Study Instance UID belongs to
that patient (its Patient ID, the regional ``ISSUER:ID`` or one of its Other
Patient IDs) and carries that accession number (``-``: none given).  A
forged or mismatched pair gets the same "not found" as a study that is not
here: the page never tells whose study a UID is.  Every value written into
the page is HTML-escaped; the images are Orthanc's own previews, fetched by
the browser through the page's own route (``.../images/INSTANCE``), which
checks the same link and rights (a user scoped to a hospital on the TsAMI
reaches no other REST route; see :mod:`kontur_plugins.shares`).
"""
from __future__ import annotations

import html
import re
from urllib.parse import quote, unquote

_UID = re.compile(r"^(0|[1-9]\d{0,38})(\.(0|[1-9]\d{0,38})){1,40}$")
#: at most this many images per series on the page (the viewer shows all)
PER_SERIES = 6


class NotShown(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


def parse(patient: str, accession: str, study: str) -> tuple[str, str, str]:
    """The URL's three values, decoded and checked; raises :class:`NotShown` (400)."""
    p, a, s = (unquote(x or "") for x in (patient, accession, study))
    if not p or len(p) > 64 or any(ord(c) < 32 for c in p) or "\\" in p:
        raise NotShown(400, "the patient ID in the link is not one (1 to 64 printable characters)")
    if len(a) > 64 or any(ord(c) < 32 for c in a):
        raise NotShown(400, "the accession number in the link is not one (at most 64 printable characters)")
    if len(s) > 64 or not _UID.match(s):
        raise NotShown(400, "the Study Instance UID in the link is not a DICOM UID")
    return p, ("" if a == "-" else a), s


def matches(study: dict, patient: str, accession: str) -> bool:
    """Is the stored study (Orthanc's expanded study) the one the link names?"""
    tags = study.get("PatientMainDicomTags") or {}
    ids = {tags.get("PatientID", "")}
    ids |= {x for x in (tags.get("OtherPatientIDs") or "").split("\\") if x}
    own = {i.split(":", 1)[1] for i in ids if ":" in i}            # the regional key ISSUER:ID
    if patient not in ids | own:
        return False
    return not accession or (study.get("MainDicomTags") or {}).get("AccessionNumber", "") == accession


def report_of(tags: dict) -> dict:
    """A report's text from Orthanc's simplified tags of a Basic Text SR, its
    SOP Instance UID and the reports it replaces (Predecessor Documents)."""
    out = {"findings": "", "conclusion": "", "observer": "", "status": tags.get("CompletionFlag", ""),
           "sop": tags.get("SOPInstanceUID", ""), "replaces": [], "time": tags.get("ContentDate", "") +
           tags.get("ContentTime", "")}
    for study in tags.get("PredecessorDocumentsSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            out["replaces"] += [x.get("ReferencedSOPInstanceUID", "") for x in series.get("ReferencedSOPSequence") or []]
    for c in tags.get("ContentSequence") or []:
        code = ((c.get("ConceptNameCodeSequence") or [{}])[0]).get("CodeValue")
        key = {"121070": "findings", "121076": "conclusion"}.get(code)
        if key:
            out[key] = "\n".join(str(i.get("TextValue", "")) for i in c.get("ContentSequence") or [])
    for v in tags.get("VerifyingObserverSequence") or []:
        out["observer"] = v.get("VerifyingObserverName", "")
    return out


def current(reports: list[dict]) -> list[dict]:
    """The reports in force: those no other report replaces (a corrected
    result's report names the one it replaces, which stays in the study as
    the record of what was said before; the page shows the one in force),
    oldest first."""
    replaced = {uid for r in reports for uid in r.get("replaces") or ()}
    return sorted((r for r in reports if r.get("sop") not in replaced), key=lambda r: r.get("time", ""))


def _date(d: str) -> str:
    """A DICOM date as the page shows it (DD.MM.YYYY)."""
    return f"{d[6:8]}.{d[4:6]}.{d[:4]}" if len(d or "") == 8 and d.isdigit() else (d or "")


def _e(value) -> str:
    return html.escape(str(value or ""), quote=True)


def page(study: dict, series: list[dict], reports: list[dict], *, images: str, viewer_link: str = "") -> str:
    """The HTML page.  ``series``: Orthanc's expanded series with ``Instances``;
    ``reports``: ``{"findings", "conclusion", "observer", "status"}``; ``images``:
    the relative path from the page to its images (``STUDY-UID/images/``: the
    page's own route, which checks the same rights, then ``INSTANCE``);
    ``viewer_link``: where the full viewer opens, ``{series}`` standing for a
    series' Orthanc ID (one link per series), else one link for the study."""
    st, pt = study.get("MainDicomTags") or {}, study.get("PatientMainDicomTags") or {}
    name = pt.get("PatientName", "").replace("^", " ").strip()
    date = st.get("StudyDate", "")
    date = _date(date)
    parts = [
        "<!DOCTYPE html>", '<html lang="ru"><head><meta charset="utf-8">',
        f"<title>{_e(name)} — {_e(st.get('StudyDescription') or 'исследование')}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;background:#fafafa;color:#222}"
        "figure{display:inline-block;margin:.3em;background:#000}"
        "img{width:192px;max-height:256px;object-fit:contain;image-rendering:pixelated}"
        ".report{background:#fff;border:1px solid #ccc;padding:0 1em;max-width:60em}"
        ".report p{white-space:pre-wrap}"
        "h2{margin-top:1.5em}</style></head>",
        '<body data-images="0">',
        f"<h1>{_e(name)}</h1>",
        f"<p>Пациент {_e(pt.get('PatientID'))}, дата рождения {_e(_date(pt.get('PatientBirthDate', '')))}; "
        f"исследование {_e(st.get('StudyDescription'))} от {_e(date)}, "
        f"номер направления {_e(st.get('AccessionNumber'))}</p>",
    ]
    if viewer_link and "{series}" not in viewer_link:
        parts.append(f'<p><a class="viewer" href="{_e(viewer_link)}">Открыть в просмотрщике</a></p>')
    parts.append("<h2>Заключение</h2>")
    if reports:
        for r in reports:
            parts.append('<div class="report">')
            if r.get("replaces"):
                parts.append('<p class="corrected">Исправленное заключение: заменяет предыдущее.</p>')
            if r.get("findings"):
                parts.append(f"<h3>Протокол</h3><p class=\"findings\">{_e(r['findings'])}</p>")
            if r.get("conclusion"):
                parts.append(f"<h3>Заключение</h3><p class=\"conclusion\">{_e(r['conclusion'])}</p>")
            if r.get("observer"):
                parts.append(f"<p>Врач: {_e(str(r['observer']).replace('^', ' '))}</p>")
            parts.append("</div>")
    else:
        parts.append('<p class="no-report">Заключение ещё не поступило.</p>')
    shown = 0
    for s in series:
        tags = s.get("MainDicomTags") or {}
        if tags.get("Modality") == "SR":
            continue
        parts.append(f"<h2>{_e(tags.get('Modality'))} {_e(tags.get('SeriesDescription') or '')} "
                     f"({len(s.get('Instances') or [])} изобр.)</h2>")
        if viewer_link and "{series}" in viewer_link and s.get("ID"):
            parts.append(f'<p><a class="viewer" href="{_e(viewer_link.replace("{series}", quote(s["ID"])))}">'
                         "Открыть серию в просмотрщике</a></p>")
        for iid in (s.get("Instances") or [])[:PER_SERIES]:
            shown += 1
            parts.append(f'<figure><img class="image" alt="" src="{_e(images)}{quote(iid)}">'
                         "</figure>")
    # the page says when every image has loaded (a browser test reads it)
    parts.append("<script>(function(){var imgs=[].slice.call(document.querySelectorAll('img.image'));"
                 "var n=0;function one(){n++;if(n===imgs.length){var ok=imgs.filter(function(i){"
                 "return i.naturalWidth>0}).length;document.body.setAttribute('data-images',String(ok));}}"
                 "imgs.forEach(function(i){if(i.complete){one()}else{i.onload=one;i.onerror=one}});"
                 "if(!imgs.length){document.body.setAttribute('data-images','0')}})();</script>")
    parts.append(f'<p class="count" data-expected="{shown}"></p></body></html>')
    return "\n".join(parts)


def not_shown(status: int, text: str) -> str:
    return ("<!DOCTYPE html><html lang=\"ru\"><head><meta charset=\"utf-8\"><title>Исследование не показано"
            f"</title></head><body><h1>Исследование не показано</h1><p>{_e(text)}</p></body></html>")
