# SPDX-License-Identifier: AGPL-3.0-or-later
"""Small facts the deploys need that pyinfra does not have: each turns one
command's output into data."""
from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class UnitStates(FactBase):
    """``{unit: {"active": bool, "enabled": bool, "pid": int}}`` for the given
    units, in one ``systemctl show``; a unit that does not exist yet is
    inactive and disabled."""

    default = dict

    def requires_command(self, *args, **kwargs) -> str:
        return "systemctl"

    def command(self, units):
        names = " ".join(shlex.quote(u) for u in units)
        return f"systemctl show --no-pager -p Id,ActiveState,UnitFileState,MainPID {names} 2>/dev/null || true"

    def process(self, output):
        states: dict[str, dict] = {}
        current: dict[str, str] = {}

        def flush():
            if current.get("Id"):
                states[current["Id"]] = {
                    "active": current.get("ActiveState") == "active",
                    "enabled": current.get("UnitFileState") in ("enabled", "enabled-runtime", "static", "alias"),
                    "pid": int(current.get("MainPID") or 0),
                }

        for line in output:
            if not line.strip():
                flush()
                current = {}
                continue
            key, _, value = line.partition("=")
            current[key] = value
        flush()
        return states


class DirectoryEntries(FactBase):
    """Names of the non-directory entries (files, links) in ``path`` matching ``glob``."""

    default = list

    def command(self, path, glob):
        return (f"find {shlex.quote(path)} -mindepth 1 -maxdepth 1 ! -type d "
                f"-name {shlex.quote(glob)} -printf '%f\\n' 2>/dev/null || true")

    def process(self, output):
        return sorted(line for line in output if line)


class InstalledPackages(FactBase):
    """Names of the installed Debian packages (status 'install ok installed')."""

    default = set

    def requires_command(self, *args, **kwargs) -> str:
        return "dpkg-query"

    def command(self):
        return "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' 2>/dev/null || true"

    def process(self, output):
        out = set()
        for line in output:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "ii":
                out.add(parts[1])
        return out


class PostgresqlRole(FactBase):
    """The stored password verifier of ``user`` and the owner of ``database``:
    ``{"running": bool, "verifier": str | None, "owner": str | None}``.
    ``running`` is False when the server cannot be reached (not installed,
    not started)."""

    def default(self):
        return {"running": False, "verifier": None, "owner": None}

    def command(self, user, database, port):
        sql = (f"select 'verifier', coalesce(rolpassword, '') from pg_authid where rolname = '{user}' "
               f"union all select 'owner', pg_get_userbyid(datdba)::text from pg_database where datname = '{database}'")
        return ("if command -v psql >/dev/null 2>&1; then "
                f"cd /tmp && runuser -u postgres -- psql -X -At -F ' ' -p {int(port)} -c {shlex.quote(sql)} 2>/dev/null "
                "&& echo 'running yes' || echo 'running no'; else echo 'running no'; fi")

    def process(self, output):
        data = self.default()
        for line in output:
            key, _, value = line.partition(" ")
            if key == "running":
                data["running"] = value == "yes"
            elif key in ("verifier", "owner"):
                data[key] = value
        return data


class PathStates(FactBase):
    """``{path: {"type": "file"|"dir"|"link"|"other", "mode": int, "user", "group",
    "sha1": str|None}}`` for many paths in one command; a missing path is absent.
    Deploys read this once per host instead of two commands per file."""

    default = dict

    def command(self, paths):
        quoted = " ".join(shlex.quote(p) for p in paths)
        return (
            f"for p in {quoted}; do "
            "if [ -L \"$p\" ]; then printf 'link|%s|%s\\n' \"$p\" \"$(readlink \"$p\")\"; "
            "elif [ -e \"$p\" ]; then "
            "s=$(stat -c '%F|%a|%U|%G' \"$p\"); h=-; "
            "if [ -f \"$p\" ]; then h=$(sha1sum < \"$p\" | cut -d' ' -f1); fi; "
            "printf 'path|%s|%s|%s\\n' \"$p\" \"$s\" \"$h\"; fi; done"
        )

    def process(self, output):
        out: dict[str, dict] = {}
        for line in output:
            parts = line.split("|")
            if parts[0] == "link" and len(parts) >= 3:
                out[parts[1]] = {"type": "link", "target": parts[2]}
            elif parts[0] == "path" and len(parts) >= 7:
                _tag, path, kind, mode, user, group, sha = parts[:7]
                out[path] = {
                    "type": "file" if kind.startswith("regular") else "dir" if kind == "directory" else "other",
                    "mode": int(mode, 8), "user": user, "group": group,
                    "sha1": None if sha == "-" else sha,
                }
        return out
