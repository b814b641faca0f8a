# SPDX-License-Identifier: AGPL-3.0-or-later
"""The exporter on the exporting node (Debian's python3, standard library and
python3-pydicom), as user orthanc:

    python3 -m kontur_plugins.research run    --policy P --secrets S --keymap K
    python3 -m kontur_plugins.research export --policy P --secrets S --keymap K FEED [--since YYYYMMDD] [STUDY ...]
    python3 -m kontur_plugins.research reidentify --keymap K --who LOGIN --reason WHY [--refused WHY]
                                                  [--send-to PEER --secrets S] KEY
    python3 -m kontur_plugins.research audit --keymap K

``run`` (kontur-research.timer, every minute) reads Orthanc's change log from
where it stopped and sends the studies that became stable through every feed
of this node; ``export`` judges the studies named, or every study (from
``--since``, by Study Date), through one feed.  An instance a feed delivered
once is not sent again.  ``S`` (mode 0600) holds the local Orthanc's account
and the region's research key: ``{"archive": {"url", "username", "password"},
"key": "..."}``; each copy goes to the feed's destination as this Orthanc's
peer.  One JSON line per study on stdout; exit 0, 1 when a study could not
be exported cleanly (a leak, a failed de-identification), 2 for bad input.
``reidentify`` answers from the key map what a pseudonym or a research copy's
Study Instance UID stands for, every request audited first; whether the
asker may is decided on the control machine, from the inventory's roles, and
a refusal is audited here too.  ``--send-to PEER`` also sends the original
studies (of the research study, or every one of the pseudonym's) from this
archive to the clinical archive PEER (an Orthanc peer of this node), each
send audited.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import sys
import warnings

from .export import Exporter, Outcome
from .feeds import FeedError, parse_research
from .keymap import KeyMap
from .pseudonyms import Keys
from .rest import OrthancArchive, endpoint_from

POSITION = "changes_seen"


def _fail(message: str) -> int:
    print(f"kontur research: {message}", file=sys.stderr)
    return 2


def _line(out: Outcome) -> str:
    return json.dumps({"feed": out.feed, "study": out.study, "selected": out.selected, "reason": out.reason,
                       "pseudonym": out.pseudonym, "new_study_uid": out.new_study_uid,
                       "delivered": out.delivered, "already": out.already,
                       "held": [{"instance": h.instance, "reason": h.reason} for h in out.held],
                       "leaks": {k: [str(x) for x in v] for k, v in out.leaks.items()}}, ensure_ascii=False)


def _bad(out: Outcome) -> bool:
    return bool(out.leaks) or any(h.reason.startswith(("de-identification failed", "not readable"))
                                  for h in out.held)


def _stable_studies(archive: OrthancArchive, keymap: KeyMap) -> tuple[list[str], int]:
    """Studies that became stable since the saved position, and the new position."""
    pos = int(keymap.meta(POSITION, "0") or 0)
    studies: list[str] = []
    while True:
        page = archive.changes(pos)
        if page.get("Last", pos) < pos:          # Orthanc's change log restarted (a new index): from the start
            pos = 0
            continue
        for ch in page.get("Changes", []):
            if ch.get("ChangeType") == "StableStudy" and ch.get("ID") not in studies:
                studies.append(ch["ID"])
        pos = max(pos, int(page.get("Last", pos)))
        if page.get("Done", True):
            return studies, pos


def _send_back(args, keymap: KeyMap) -> tuple[list[dict], str | None]:
    """The original studies behind ``args.key`` sent from this node's archive to the clinical archive
    ``args.send_to`` (its Orthanc peer), each send audited.  (what was sent, the problem if any)"""
    sent: list[dict] = []
    try:
        with open(args.secrets, encoding="utf-8") as f:
            archive = OrthancArchive(endpoint_from(json.load(f)["archive"]))
    except (OSError, ValueError, KeyError) as exc:
        return sent, f"{args.secrets}: {exc}; expected the archive's url, username and password"
    for uid in keymap.original_studies(args.key):
        try:
            study = archive.find_study(uid)
            if study is None:
                problem = f"the original study {uid} is no longer in this archive"
            else:
                count = archive.send_study(args.send_to, study)
                keymap.audit(who=args.who, reason=args.reason, asked=args.key,
                             answer=f"sent: the original study {uid} ({count} instances) to {args.send_to}")
                sent.append({"study_uid": uid, "instances": count, "to": args.send_to})
                continue
        except (OSError, RuntimeError, ValueError) as exc:
            problem = f"sending the original study {uid} to {args.send_to} failed: {exc}"
        keymap.audit(who=args.who, reason=args.reason, asked=args.key, answer=f"not sent: {problem}")
        return sent, problem
    return sent, None


def _keymap_command(args) -> int:
    """Re-identification and its audit trail: the key map (and, to send original studies back, the
    archive's account); never the research key."""
    keymap = KeyMap(args.keymap)
    try:
        if args.command == "audit":
            for at, who, reason, asked, answer in keymap.audit_trail():
                print(json.dumps({"at": at, "who": who, "reason": reason, "asked": asked, "answer": answer},
                                 ensure_ascii=False))
            return 0
        if args.send_to and not args.secrets:
            return _fail("--send-to needs --secrets (the archive's account that sends the original studies)")
        if not args.reason.strip():
            keymap.audit(who=args.who, reason="", asked=args.key, answer="refused: no reason given")
            return _fail("a re-identification needs --reason (it is audited: who, when, why, what)")
        if args.refused:
            keymap.audit(who=args.who, reason=args.reason, asked=args.key, answer=f"refused: {args.refused}")
            return _fail(f"refused: {args.refused} (the request is audited)")
        person = keymap.reidentify(args.key, who=args.who, reason=args.reason)
        if person is None:
            return _fail(f"{args.key!r} is no pseudonym or research study UID this node exported (audited)")
        answer = {"pseudonym": person.pseudonym, "issuer": person.issuer, "patient_id": person.patient_id,
                  "patient_name": person.patient_name, "birth_date": person.birth_date,
                  "original_study_uid": person.original_study_uid}
        rc = 0
        if args.send_to:
            answer["sent"], problem = _send_back(args, keymap)
            if problem:
                answer["problem"], rc = problem, 1
        print(json.dumps(answer, ensure_ascii=False))
        return rc
    finally:
        keymap.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m kontur_plugins.research")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("run", "export"):
        p = sub.add_parser(name)
        p.add_argument("--policy", required=True)
        p.add_argument("--secrets", required=True)
        p.add_argument("--keymap", required=True)
        if name == "export":
            p.add_argument("--since", default=None)
            p.add_argument("feed")
            p.add_argument("studies", nargs="*")
    re_ = sub.add_parser("reidentify")
    re_.add_argument("--keymap", required=True)
    re_.add_argument("--who", required=True)
    re_.add_argument("--reason", required=True)
    re_.add_argument("--refused", default=None, help="the control machine refused the request: audit it only")
    re_.add_argument("--send-to", default=None, help="the clinical archive (an Orthanc peer of this node) that "
                                                     "gets the original studies back")
    re_.add_argument("--secrets", default=None, help="this node's exporter secrets (the archive's account)")
    re_.add_argument("key")
    au = sub.add_parser("audit")
    au.add_argument("--keymap", required=True)
    args = ap.parse_args(argv)
    if args.command in ("reidentify", "audit"):
        return _keymap_command(args)
    # pydicom's value-length notes about what the hospitals wrote are not the exporter's to report
    warnings.simplefilter("ignore", UserWarning)
    try:
        with open(args.policy, encoding="utf-8") as f:
            config = parse_research(json.load(f))
        with open(args.secrets, encoding="utf-8") as f:
            secrets = json.load(f)
        keys = Keys(str(secrets["key"]).encode(), config.region_code)
        archive = OrthancArchive(endpoint_from(secrets["archive"]))
    except FeedError as exc:
        return _fail("the policy's research section is not valid: " + "; ".join(exc.problems))
    except KeyError as exc:
        return _fail(f"{args.secrets} has no {exc}; expected archive (url, username, password) and key")
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    if args.command == "export":
        if args.feed not in config.feeds:
            return _fail(f"no feed {args.feed!r} here; this node's feeds: {', '.join(sorted(config.feeds)) or 'none'}")
        if args.since is not None and not (len(args.since) == 8 and args.since.isdigit()):
            return _fail(f"--since {args.since!r} is not a date; expected YYYYMMDD")
    # one exporter at a time per key map: the timer's run and an operator's export would otherwise judge
    # and send the same studies side by side (the lock goes with the process, also when it is killed)
    lock = open(args.keymap + ".lock", "a")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    keymap = KeyMap(args.keymap)
    exporter = Exporter(config, keys, keymap, archive, archive.store_at_peer)
    rc = 0
    try:
        if args.command == "export":
            work = [(args.feed, s) for s in (args.studies or archive.studies())
                    if args.since is None or args.studies or archive.study_date(s) >= args.since]
            pos = None
        else:
            studies, pos = _stable_studies(archive, keymap)
            work = [(feed, s) for s in studies for feed in sorted(config.feeds)]
        for feed, study in work:
            out = exporter.export_study(feed, study)
            rc = 1 if _bad(out) else rc
            print(_line(out), flush=True)
        if pos is not None:
            keymap.set_meta(POSITION, str(pos))
    except OSError as exc:             # Orthanc or the destination went away: the next run starts where this one did
        print(f"kontur research: the archive or the feed's destination did not answer ({exc}); nothing is lost, "
              f"the next run retries", file=sys.stderr)
        return 1
    finally:
        keymap.close()
        lock.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
