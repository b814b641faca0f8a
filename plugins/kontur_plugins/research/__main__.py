# SPDX-License-Identifier: AGPL-3.0-or-later
"""The exporter on the exporting node (Debian's python3, standard library and
python3-pydicom):

    python3 -m kontur_plugins.research export --policy POLICY.json \\
        --endpoints ENDPOINTS.json --key KEYFILE --keymap KEYMAP.sqlite FEED [STUDY ...]

``ENDPOINTS.json`` (mode 0600, beside the node's other secrets) names the
archive and each destination: ``{"archive": {"url", "username", "password"},
"destinations": {"research": {...}}}``.  Without STUDY every study of the
archive is judged.  Prints one JSON object per study; exit 0 when nothing was
held back for a reason other than the feed's own rules, 1 when a study could
not be exported cleanly, 2 for bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .export import Exporter
from .feeds import FeedError, parse_research
from .keymap import KeyMap
from .pseudonyms import Keys
from .rest import OrthancArchive, endpoint_from, store


def _fail(message: str) -> int:
    print(f"kontur research export: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m kontur_plugins.research")
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--policy", required=True)
    ex.add_argument("--endpoints", required=True)
    ex.add_argument("--key", required=True)
    ex.add_argument("--keymap", required=True)
    ex.add_argument("feed")
    ex.add_argument("studies", nargs="*")
    args = ap.parse_args(argv)
    # pydicom's value-length notes about what the hospitals wrote are not the exporter's to report
    warnings.simplefilter("ignore", UserWarning)
    try:
        with open(args.policy, encoding="utf-8") as f:
            config = parse_research(json.load(f))
        with open(args.endpoints, encoding="utf-8") as f:
            endpoints = json.load(f)
        with open(args.key, "rb") as f:
            keys = Keys(f.read().strip(), config.region_code)
    except FeedError as exc:
        return _fail("the policy's research section is not valid: " + "; ".join(exc.problems))
    except (OSError, ValueError, KeyError) as exc:
        return _fail(str(exc))
    if args.feed not in config.feeds:
        return _fail(f"no feed {args.feed!r}; the policy has {', '.join(sorted(config.feeds)) or 'none'}")
    feed = config.feeds[args.feed]
    dest = (endpoints.get("destinations") or {}).get(feed.destination)
    if dest is None:
        return _fail(f"the endpoints file names no destination {feed.destination!r}")
    archive = OrthancArchive(endpoint_from(endpoints["archive"]))
    destination = endpoint_from(dest)
    keymap = KeyMap(args.keymap)
    exporter = Exporter(config, keys, keymap, archive, lambda _name, data: store(destination, data))
    rc = 0
    try:
        for study in args.studies or archive.studies():
            out = exporter.export_study(args.feed, study)
            if out.leaks or any(h.reason.startswith(("de-identification failed", "not readable"))
                                for h in out.held):
                rc = 1
            print(json.dumps({"study": study, "selected": out.selected, "reason": out.reason,
                              "pseudonym": out.pseudonym, "new_study_uid": out.new_study_uid,
                              "delivered": out.delivered,
                              "held": [{"instance": h.instance, "reason": h.reason} for h in out.held],
                              "leaks": {k: [str(x) for x in v] for k, v in out.leaks.items()}},
                             ensure_ascii=False), flush=True)
    finally:
        keymap.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
