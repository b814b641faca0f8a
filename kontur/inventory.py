"""Loading an inventory file: YAML (round-trip, so planner edits keep
comments) -> plain data -> :class:`kontur.model.Region` -> whole-region rules.

Every problem is reported as ``path.to.field: what is wrong and what is
expected``, with the line in the file where it can be found.
"""
from __future__ import annotations

import fcntl
import io
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from . import paths, safeyaml
from .model import SECRET_KEYS, Region

#: the folder with templates/, plugins/, deploys/, … (the checkout, or the installed
#: package's data): decided in :mod:`kontur.paths`, named here for older callers
REPO_ROOT = paths.ROOT
EXAMPLE_INVENTORY = paths.EXAMPLE_INVENTORY


@dataclass(frozen=True, order=True)
class Problem:
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class InventoryError(Exception):
    """The inventory cannot be accepted; ``problems`` says why, each with its path."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)")

    def report(self) -> str:
        lines = [f"{self.source}: the region is not sound ({len(self.problems)} problem"
                 f"{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def yaml_rt() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096
    return y


def parse_yaml(text: str, source: str) -> Any:
    """Parse an inventory within bounds (size, nesting, aliases: :mod:`kontur.safeyaml`);
    every failure is an :class:`InventoryError` with the line."""
    try:
        return safeyaml.load(safeyaml.bounded(yaml_rt()), text)
    except safeyaml.YamlRefused as exc:
        raise InventoryError(source, [Problem("", exc.message, exc.line)]) from None


def to_plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, (int, float)) else k: to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node


def dotted(loc: tuple | list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def line_of(doc: Any, loc: tuple | list) -> int | None:
    """The 1-based line of ``loc`` in a round-trip document, as deep as it goes."""
    line = None
    node = doc
    for part in loc:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, IndexError, TypeError, AttributeError):
            break
    return line


_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def _message(err: dict) -> str:
    msg = err["msg"]
    for prefix in _PYDANTIC_PREFIXES:
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown field; check its spelling against inventory/README.md"
    if kind == "missing":
        return "required field is missing"
    if kind in ("literal_error", "enum"):
        return f"{err.get('input')!r} is not allowed; {msg[0].lower() + msg[1:]}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{err.get('input')!r}: {msg[0].lower() + msg[1:]}"
    if kind.startswith(("int_", "float_", "string_type", "bool_")):
        return f"{err.get('input')!r}: {msg[0].lower() + msg[1:]}"
    return msg


def _secret_problems(doc: Any, plain: Any, loc: tuple = ()) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(plain, dict):
        for k, v in plain.items():
            if isinstance(k, str) and k.lower() in SECRET_KEYS:
                out.append(Problem(
                    dotted(loc + (k,)),
                    "secrets never go in the inventory; remove it: kontur generates passwords "
                    "and keys once into the secrets store (see `kontur render --help`)",
                    line_of(doc, loc + (k,))))
            else:
                out += _secret_problems(doc, v, loc + (k,))
    elif isinstance(plain, list):
        for i, v in enumerate(plain):
            out += _secret_problems(doc, v, loc + (i,))
    return out


def _inline_classifier(doc: Any, plain: Any, base: Path | None) -> list[Problem]:
    """Read the classifier file the inventory names into ``transfer.classifier.codes``."""
    from . import classifier
    sec = plain.get("transfer") if isinstance(plain, dict) else None
    cls = sec.get("classifier") if isinstance(sec, dict) else None
    if not isinstance(cls, dict) or not cls.get("file"):
        return []
    loc = ("transfer", "classifier", "file")
    path = Path(str(cls["file"]))
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    try:
        cls["codes"] = classifier.read(path, str(cls["version"]) if cls.get("version") is not None else None)
    except classifier.ClassifierError as exc:
        return [Problem(dotted(loc), f"the classifier: {p}", line_of(doc, loc)) for p in exc.problems]
    return []


def validate_data(doc: Any, source: str, base: Path | None = None) -> Region:
    """Validate a parsed document; raise :class:`InventoryError` with every problem.
    ``base``: the directory relative file names in it are read from."""
    from .rules import check_region

    if not isinstance(doc, dict):
        raise InventoryError(source, [Problem(
            "", "expected a mapping with the keys kontur, region, centre, nodes, hospitals", 1)])
    plain = to_plain(doc)
    secrets = _secret_problems(doc, plain)
    if secrets:
        raise InventoryError(source, sorted(secrets, key=lambda p: (p.line or 0, p.path)))
    files = _inline_classifier(doc, plain, base)
    if files:
        raise InventoryError(source, files)
    try:
        region = Region.model_validate(plain)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(Problem(dotted(loc), _message(err), line_of(doc, loc)))
        raise InventoryError(source, _dedupe(problems)) from None
    problems = [Problem(dotted(loc), msg, line_of(doc, loc)) for loc, msg in check_region(region)]
    if problems:
        raise InventoryError(source, _dedupe(problems))
    return region


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen = set()
    out = []
    for p in sorted(problems, key=lambda p: (p.line or 0, p.path, p.message)):
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out


def read_text(path: Path) -> str:
    """The inventory's text: a regular UTF-8 file of at most
    :data:`kontur.safeyaml.MAX_BYTES`; anything else is an :class:`InventoryError`."""
    try:
        return safeyaml.read_text(path, "a region YAML file (see inventory/example/region.yaml)")
    except safeyaml.YamlRefused as exc:
        raise InventoryError(str(path), [Problem("", exc.message, exc.line)]) from None


def load_text(text: str, source: str = "<inventory>", base: Path | None = None) -> Region:
    return validate_data(parse_yaml(text, source), source, base)


def load(path: str | Path | None = None) -> Region:
    """Load and validate an inventory file (the example region by default)."""
    p = Path(path) if path else EXAMPLE_INVENTORY
    return load_text(read_text(p), str(p), p.resolve().parent)


def dump_rt(doc: Any) -> str:
    buf = io.StringIO()
    yaml_rt().dump(doc, buf)
    return buf.getvalue()


# --- read-modify-write ------------------------------------------------------

@contextmanager
def locked(path: str | Path) -> Iterator[Path]:
    """Hold the inventory for one read-modify-write (``kontur inventory`` edits).

    An exclusive ``flock`` on the file itself (on its target if ``path`` is a
    symlink; no lock file is left beside it).  An edit replaces the file, so a
    process that waited for the lock takes it again on the new file: two edits
    at once are made one after the other, each on what the other wrote.  A
    file that cannot be written (no write permission, its directory not
    writable) is refused here, before anything is changed.  Yields the real
    file: read it, then write it with :func:`kontur.files.replace_keeping_mode`, inside the block.
    """
    shown = str(path)
    real = Path(os.path.realpath(path))
    while True:
        read_text(real)          # missing, a directory, a pipe, too big: the usual messages
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise InventoryError(shown, [Problem("", f"cannot be opened: {exc.strerror or exc}")]) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"kontur: waiting for another edit of {shown} to finish", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(real)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue         # replaced while we waited: lock the new file
            _check_writable(shown, real, st)
            yield real
            return
        finally:
            os.close(fd)         # releases the lock


def _check_writable(shown: str, real: Path, st: os.stat_result) -> None:
    if not st.st_mode & 0o222 or not os.access(real, os.W_OK):
        raise InventoryError(shown, [Problem("", (
            f"is read-only (mode {stat.S_IMODE(st.st_mode):04o}); nothing was changed. Make it writable "
            f"(chmod u+w {real}) if it is meant to be edited"))])
    if not os.access(real.parent, os.W_OK | os.X_OK):
        raise InventoryError(shown, [Problem("", (
            f"its directory {real.parent} is not writable; nothing was changed. An edit writes a new "
            "file there and renames it over the inventory, so the directory must be writable"))])
