# SPDX-License-Identifier: AGPL-3.0-or-later
"""``kontur audit --report DIR``: the evidence, for people and for CI tools.

From the controls' outcomes (checks/conftest.py writes one JSON line per
control and node) this writes:

- ``index.html``: the region's summary (every hospital, its findings) and a
  page per hospital (``HOSPITAL.html``; ``centre.html`` for the nodes no
  hospital owns: the TsAMI, the research sandbox), each finding with its
  evidence: the commands, their answers, the time;
- ``junit.xml``: a test suite per node, a case per control named by its ID
  (``KONTUR-SEC-01[onco-lami]``), impact and reference in the failure and in
  the case's output -- the JUnit schema CI tools read has no per-case properties;
- ``report.json``: all of it for machines.
"""
from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from . import paths
from .model import Region

CENTRE = "centre"


@dataclass
class Outcome:
    name: str                 # KONTUR-SEC-01[onco-lami]
    control: str
    node: str | None
    outcome: str              # passed / failed / error / skipped
    message: str = ""
    impact: float | None = None
    reference: str | None = None
    title: str = ""
    check: str = ""
    duration: float = 0.0
    time: float = 0.0
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


def read_results(path: Path) -> list[Outcome]:
    if not path.exists():
        return []
    fields = set(Outcome.__dataclass_fields__)
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            out.append(Outcome(**{k: v for k, v in d.items() if k in fields}))
    return out


def hospital_of(region: Region, node: str | None) -> str:
    for key, h in region.hospitals.items():
        if h.node == node:
            return key
    return CENTRE


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def junit(outcomes: list[Outcome], region: Region) -> ET.ElementTree:
    suites = ET.Element("testsuites", name=f"kontur audit {region.region.name}")
    by_node: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_node.setdefault(o.node or region.region.name, []).append(o)
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time": 0.0}
    for node, items in by_node.items():
        counts = {"tests": len(items), "failures": sum(o.outcome == "failed" for o in items),
                  "errors": sum(o.outcome == "error" for o in items),
                  "skipped": sum(o.outcome == "skipped" for o in items)}
        seconds = sum(o.duration for o in items)
        for k, v in counts.items():
            total[k] += v
        total["time"] += seconds
        first = min((o.time for o in items), default=0.0)
        suite = ET.SubElement(suites, "testsuite", name=f"kontur.audit.{node}", hostname=node,
                              timestamp=dt.datetime.fromtimestamp(first, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                              time=f"{seconds:.3f}", **{k: str(v) for k, v in counts.items()})
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="hospital", value=hospital_of(region, node))
        for o in items:
            case = ET.SubElement(suite, "testcase", name=o.name, classname=f"kontur.audit.{node}",
                                 time=f"{o.duration:.3f}")
            about = f"impact {o.impact}; reference: {o.reference}"
            if o.outcome in ("failed", "error"):
                el = ET.SubElement(case, "failure" if o.outcome == "failed" else "error",
                                   message=f"{o.control}: {o.message.splitlines()[0] if o.message else o.outcome}"[:500],
                                   type=o.control)
                el.text = f"{o.message}\n{about}"
            elif o.outcome == "skipped":
                ET.SubElement(case, "skipped", message=o.message[:500])
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([o.title, about] + [f"$ {e['command']}\n{e['stdout']}" for e in o.evidence])
    suites.set("tests", str(total["tests"]))
    suites.set("failures", str(total["failures"]))
    suites.set("errors", str(total["errors"]))
    suites.set("time", f"{total['time']:.3f}")
    tree = ET.ElementTree(suites)
    ET.indent(tree)
    return tree


def as_json(outcomes: list[Outcome], region: Region, lab: bool) -> dict[str, Any]:
    return {"region": region.region.name, "lab": lab,
            "compliant": all(o.passed or o.outcome == "skipped" for o in outcomes),
            "controls": [{**asdict(o), "hospital": hospital_of(region, o.node)} for o in outcomes]}


def _pages(outcomes: list[Outcome], region: Region) -> dict[str, list[Outcome]]:
    pages: dict[str, list[Outcome]] = {}
    for o in outcomes:
        pages.setdefault(hospital_of(region, o.node), []).append(o)
    return pages


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(paths.TEMPLATES)),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    return env


def write(directory: Path, region: Region, outcomes: list[Outcome], *, lab: bool) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    generated = _when(max((o.time for o in outcomes), default=0.0))
    pages = _pages(outcomes, region)
    titles = {k: (region.hospitals[k].title if k in region.hospitals else f"{region.centre.title} (TsAMI, research)")
              for k in pages}
    env = _env()
    summary = [{"key": k, "title": titles[k], "file": f"{k}.html", "total": len(v),
                "failed": [o for o in v if o.outcome in ("failed", "error")],
                "nodes": sorted({o.node for o in v if o.node})} for k, v in pages.items()]
    index = directory / "index.html"
    index.write_text(env.get_template("audit-index.html.j2").render(
        region=region, summary=summary, generated=generated, lab=lab,
        total=len(outcomes), failed=sum(o.outcome in ("failed", "error") for o in outcomes)), encoding="utf-8")
    hospital_files = []
    for k, v in pages.items():
        path = directory / f"{k}.html"
        path.write_text(env.get_template("audit-hospital.html.j2").render(
            region=region, title=titles[k], outcomes=sorted(v, key=lambda o: (o.passed, o.name)),
            generated=generated, lab=lab), encoding="utf-8")
        hospital_files.append(path)
    junit_path = directory / "junit.xml"
    junit(outcomes, region).write(junit_path, encoding="utf-8", xml_declaration=True)
    json_path = directory / "report.json"
    json_path.write_text(json.dumps(as_json(outcomes, region, lab), ensure_ascii=False, indent=2), encoding="utf-8")
    return {"index": index, "hospitals": hospital_files, "junit": junit_path, "json": json_path}
