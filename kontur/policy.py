"""The replication policy file of one node (``/etc/kontur/policy.json``).

The control side builds it from the inventory; the Orthanc Python plugin under
``plugins/`` reads it (schema: ``plugins/kontur_plugins/replication/config.py``,
which also validates it -- :func:`build_policy` output always passes that
check).  Deterministic: no timestamps; the renderer dumps it with sorted keys.

LAMI and gateway nodes replicate to their upstream (the TsAMI) under their
hospital's ``replication`` section; every other node gets
``"replication": {"enabled": false, "reason": ...}`` so the same entry script
can run everywhere.
"""
from __future__ import annotations

import sys
from typing import Any

from . import paths
from .errors import InvalidInput
from .model import Region, Role

SCHEMA = 1
STATE_DIR = "/var/lib/kontur"
PLUGINS_SRC = paths.PLUGINS

#: knobs the control side sets (the rest keep the plugin's defaults)
INTERMITTENT_RETRY_MAX_SECONDS = 60
#: ... and probes every this many seconds while backed off (the link may be up briefly)
INTERMITTENT_PROBE_SECONDS = 10

UPSTREAM_KEYS = ("name", "aet", "url", "username", "password", "ca_file", "cert_file", "key_file")


def build_policy(region: Region, node: str, upstream: dict | None, *,
                 state_dir: str = STATE_DIR, tuning: dict[str, float] | None = None) -> dict[str, Any]:
    """The policy document for ``node``.

    ``upstream`` comes from the renderer: name, aet, url (with a trailing
    slash), username, password and the TLS files (None for plain http).
    """
    if node not in region.nodes:
        raise InvalidInput(f"node {node!r} is not in the inventory; known: {', '.join(sorted(region.nodes))}")
    spec = region.nodes[node]
    hospital = region.hospital_of(node)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "node": node,
        "role": spec.role.value,
        "hospital": hospital,
        "timezone": region.region.timezone,
        "state_dir": state_dir,
        "transfer": transfer_section(region, node),
        "viewer": viewer_section(region, node),
    }
    research = research_section(region, node)
    if research is not None:
        doc["research"] = research
    if spec.role not in (Role.LAMI, Role.GATEWAY):
        doc["replication"] = {"enabled": False,
                              "reason": f"a {spec.role.value} node does not replicate to an upstream"}
        return doc
    if not spec.upstream:
        doc["replication"] = {"enabled": False, "reason": f"{node} has no upstream in the inventory"}
        return doc
    if upstream is None:
        raise InvalidInput(f"{node} replicates to {spec.upstream}: the renderer must give its address and credentials")
    missing = [k for k in ("name", "url", "username", "password") if not upstream.get(k)]
    if missing:
        raise InvalidInput(f"{node}: upstream is missing {', '.join(missing)}")
    unknown = sorted(set(upstream) - set(UPSTREAM_KEYS))
    if unknown:
        raise InvalidInput(f"{node}: upstream has unknown key(s) {', '.join(unknown)}")
    url = str(upstream["url"])
    if not url.endswith("/"):
        url += "/"
    rep_src = region.hospitals[hospital].replication if hospital else None
    gateway = spec.role == Role.GATEWAY
    mode = rep_src.policy.value if rep_src else "all"
    knobs: dict[str, float] = {}
    if hospital and region.hospitals[hospital].intermittent_link:
        # a mobile unit reaches the checkpoint for a while: try often
        knobs["retry_max_seconds"] = INTERMITTENT_RETRY_MAX_SECONDS
        knobs["link_probe_seconds"] = INTERMITTENT_PROBE_SECONDS
    knobs.update(tuning or {})
    doc["replication"] = {
        "enabled": True,
        # a gateway keeps no archive: it forwards everything whatever the hospital's policy says
        "mode": "all" if gateway else mode,
        "gateway": gateway,
        "windows": list(rep_src.windows) if rep_src else [],
        "bandwidth_mbit": rep_src.bandwidth_mbit if rep_src else None,
        "deadline_hours": rep_src.deadline_hours if rep_src else 24,
        "retention_days": (rep_src.retention_days if rep_src else 7) if gateway else None,
        "upstream": {
            "name": upstream["name"],
            "aet": upstream.get("aet"),
            "url": url,
            "username": upstream["username"],
            "password": upstream["password"],
            "ca_file": upstream.get("ca_file"),
            "cert_file": upstream.get("cert_file"),
            "key_file": upstream.get("key_file"),
        },
        "tuning": dict(sorted(knobs.items())),
    }
    check_policy(doc)
    return doc


def viewer_section(region: Region, node: str) -> dict[str, Any]:
    """What the viewer link needs (issue 12): the hospital a study is of (by the
    Issuer of Patient ID its hospital's node stamps at ingest), the region's
    hospitals (what a study can be shared with), and its shares: on the TsAMI
    only, the one archive where a user is kept to a hospital.  Elsewhere it is
    empty, so adding a hospital changes (and restarts) no other node."""
    if region.nodes[node].role != Role.TSAMI:
        return {"shares": False}
    return {"issuers": {region.issuer_of(hk): hk for hk, h in sorted(region.hospitals.items()) if h.node},
            "hospitals": sorted(region.hospitals),
            "shares": True}


def transfer_section(region: Region, node: str) -> dict[str, Any]:
    """The ingest stage (issue 10) on the nodes that take studies from devices
    and forward them; the others store what they get as it is."""
    spec = region.nodes[node]
    hospital = region.hospital_of(node)
    if spec.role not in (Role.LAMI, Role.GATEWAY):
        return {"enabled": False, "reason": f"a {spec.role.value} node stores what it receives as it is"}
    if hospital is None:
        return {"enabled": False, "reason": f"{node} serves no hospital in the inventory"}
    return {"enabled": True, "repair_text": True, "issuer": region.issuer_of(hospital),
            "patient_key": region.transfer.patient_key, "validation": validation_section(region, hospital)}


def validation_section(region: Region, hospital: str | None) -> dict[str, Any]:
    """The §5.6 rules a hospital's studies are held to (the region's, where ``hospital`` is None):
    rendered for its node's ingest stage, and read by the audit's sample at the TsAMI."""
    pkg = region.transfer
    h = region.hospitals[hospital] if hospital is not None else None
    switched = {**pkg.rules, **(h.transfer_rules if h is not None else {})}
    plugins_importable()
    from kontur_plugins.transfer.rules import DEFAULT_PATHS, RULES
    return {
        "mode": h.validation if h is not None else "enforce",
        "rules": [r for r in RULES if switched.get(r, True)],
        "paths": {k: list(getattr(pkg, k) or v) for k, v in DEFAULT_PATHS.items()},
        "classifier": ({"version": pkg.classifier.version, "codes": dict(sorted(pkg.classifier.codes.items()))}
                       if pkg.classifier else None),
    }


def research_section(region: Region, node: str) -> dict[str, Any] | None:
    """The research feeds ``node`` exports (issue 16; schema: plugins/kontur_plugins/research/feeds.py),
    None where it exports none.  The key and the endpoints' credentials are not here: they are secrets."""
    feeds = region.research_feeds_at(node)
    if not feeds:
        return None
    return {
        "region_code": region.region.code,
        "link_issuers": list(region.research.link_issuers),
        "hospitals": {region.issuer_of(h): h for h in sorted(region.hospitals)},
        "feeds": {name: {"destination": f.destination,
                         "select": f.select.model_dump(exclude_none=True, exclude_defaults=True),
                         "profile": f.profile.model_dump()} for name, f in sorted(feeds.items())},
    }


def plugins_importable() -> None:
    """The plugin's pure modules are the one definition of the policy's schema and rules."""
    if str(PLUGINS_SRC) not in sys.path:
        sys.path.insert(0, str(PLUGINS_SRC))


def check_policy(doc: dict[str, Any]) -> None:
    """Validate with the plugin's own parser (the one that runs on the node)."""
    plugins_importable()
    from kontur_plugins.problems import ConfigProblems
    from kontur_plugins.replication.config import parse_policy
    from kontur_plugins.research.feeds import parse_research
    from kontur_plugins.transfer.config import parse_transfer
    try:
        parse_policy(doc)
        parse_transfer(doc)
        parse_research(doc)
    except ConfigProblems as exc:
        raise InvalidInput(f"policy for {doc.get('node')} is not valid: " + "; ".join(exc.problems)) from None
