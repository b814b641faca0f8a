"""The regional classifier of procedures (issue 10): read, checked, inlined.

The inventory names the file (``transfer.classifier.file``, relative to the
inventory) and its version; ``kontur validate`` and every command that loads
the inventory read it here, so a missing or malformed classifier is a clear
inventory problem on the control machine, never a plugin crash on a node.

Formats:

* CSV (UTF-8, ``,`` or ``;``): a header with the columns ``code`` and ``name``
  (``код``/``наименование`` too), one procedure per row;
* YAML: ``codes: {code: name}`` (or a list of ``{code, name}``), with an
  optional ``version`` that must match the inventory's.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

CODE_HEADERS = {"code", "код"}
NAME_HEADERS = {"name", "наименование", "название"}
MAX_CODE = 16       # a DICOM Code Value (SH)


class ClassifierError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _check(code: Any, name: Any, where: str, seen: dict[str, str], problems: list[str]) -> None:
    code = str(code).strip() if code is not None else ""
    name = str(name).strip() if name is not None else ""
    if not code:
        problems.append(f"{where}: empty code")
    elif len(code) > MAX_CODE or "\\" in code:
        problems.append(f"{where}: code {code!r} is not a DICOM code value (at most {MAX_CODE} characters, no backslash)")
    elif code in seen:
        problems.append(f"{where}: code {code!r} appears twice ({seen[code]} and here)")
    elif not name:
        problems.append(f"{where}: code {code!r} has no name")
    else:
        seen[code] = where
        return
    seen.setdefault(code, where)


def parse_csv(text: str, source: str) -> dict[str, str]:
    sample = text[:2000]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    rows = [(i, r) for i, r in enumerate(rows, 1) if any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
    if not rows:
        raise ClassifierError([f"{source}: empty; expected a header line 'code,name' and one line per procedure"])
    line, header = rows[0]
    cols = [h.strip().lower().lstrip("\ufeff") for h in header]
    try:
        ci = next(i for i, h in enumerate(cols) if h in CODE_HEADERS)
        ni = next(i for i, h in enumerate(cols) if h in NAME_HEADERS)
    except StopIteration:
        raise ClassifierError([f"{source} line {line}: the header is {header!r}; expected columns 'code' and 'name'"]) from None
    codes: dict[str, str] = {}
    seen: dict[str, str] = {}
    problems: list[str] = []
    for line, row in rows[1:]:
        if len(row) <= max(ci, ni):
            problems.append(f"{source} line {line}: {len(row)} column(s); expected 'code' and 'name'")
            continue
        before = len(problems)
        _check(row[ci], row[ni], f"{source} line {line}", seen, problems)
        if len(problems) == before:
            codes[row[ci].strip()] = row[ni].strip()
    if problems:
        raise ClassifierError(problems)
    return codes


def parse_yaml(text: str, source: str, version: str | None) -> dict[str, str]:
    from ruamel.yaml import YAML

    from . import safeyaml
    try:
        # bounded like the inventory: no alias bombs, no deep nesting
        doc = safeyaml.load(safeyaml.bounded(YAML(typ="safe", pure=True)), text)
    except safeyaml.YamlRefused as exc:
        where = f"{source} line {exc.line}" if exc.line else source
        raise ClassifierError([f"{where}: {exc.message}"]) from None
    if not isinstance(doc, dict) or "codes" not in doc:
        raise ClassifierError([f"{source}: expected a mapping with 'codes' (code: name) and optionally 'version'"])
    problems: list[str] = []
    if doc.get("version") is not None and version is not None and str(doc["version"]) != version:
        problems.append(f"{source}: its version is {doc['version']!r} but the inventory says {version!r}")
    items = doc["codes"]
    pairs: list[tuple[Any, Any, str]] = []
    if isinstance(items, dict):
        pairs = [(k, v, f"{source}: codes.{k}") for k, v in items.items()]
    elif isinstance(items, list):
        for i, it in enumerate(items):
            if not isinstance(it, dict):
                problems.append(f"{source}: codes[{i}] is not a mapping with code and name")
                continue
            pairs.append((it.get("code"), it.get("name"), f"{source}: codes[{i}]"))
    else:
        problems.append(f"{source}: codes must be a mapping or a list, not {type(items).__name__}")
    codes: dict[str, str] = {}
    seen: dict[str, str] = {}
    for code, name, where in pairs:
        before = len(problems)
        _check(code, name, where, seen, problems)
        if len(problems) == before:
            codes[str(code).strip()] = str(name).strip()
    if not pairs and not problems:
        problems.append(f"{source}: no codes")
    if problems:
        raise ClassifierError(problems)
    return codes


def read(path: Path, version: str | None = None) -> dict[str, str]:
    from . import safeyaml
    try:
        text = safeyaml.read_text(path, "a CSV or YAML file")
    except safeyaml.YamlRefused as exc:
        where = f"{path} line {exc.line}" if exc.line else str(path)
        raise ClassifierError([f"{where}: {exc.message}"]) from None
    if path.suffix.lower() == ".csv":
        return parse_csv(text, str(path))
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(text, str(path), version)
    raise ClassifierError([f"{path}: unknown format; expected a .csv or .yaml file"])
