"""Bounded YAML reading for the files kontur is given (issue 15).

An inventory or a classifier is written by people, but a file of a few
kilobytes can still stop kontur: aliases that refer to aliases ("billion
laughs": nine levels of nine-fold aliases is 387 million nodes once anything
walks the document), thousands of nested brackets (a RecursionError deep in
the parser), or a file of tens of megabytes (minutes of parsing).  This
module reads such files within bounds and turns every way a read or a parse
can fail into :class:`YamlRefused` with the line where it happened:

* the file: a regular file of at most :data:`MAX_BYTES`, UTF-8;
* nesting: at most :data:`MAX_DEPTH` levels (an inventory has 7);
* aliases: allowed, but together they may add at most :data:`MAX_ALIAS_NODES`
  nodes to the document, counted while it is composed (nothing is expanded
  to count it); an alias inside the node it names (a cycle) is refused.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer, ComposerError, MaxDepthExceededError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, SequenceNode

#: 4 MiB.  The example region is 10 KB; a generated region of 200 hospitals
#: (kontur.regiongen) is 196 KiB and 19,600 nodes, so this is twenty times a
#: large region, with room for comments.  ruamel's round-trip parser reads
#: about 200 KB a second, so the largest accepted file parses in ~20 s; a
#: 50 MB file is refused before a byte of it is parsed.
MAX_BYTES = 4 * 1024 * 1024

#: nesting levels; an inventory is 7 deep (nodes.X.ports.dicom, hospitals.X.
#: modalities[i].station_names[j]), Python's own limit is reached near 1,000.
MAX_DEPTH = 32

#: nodes that aliases may add when the document is expanded.  Anchors for
#: shared transfer windows or staff over a few hundred hospitals add a few
#: thousand; the bomb adds hundreds of millions.
MAX_ALIAS_NODES = 100_000


class YamlRefused(Exception):
    """The file cannot be read as YAML within the bounds; ``line`` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


class BoundExceeded(ComposerError):
    """A bound of this module, not a syntax error."""


class BoundedComposer(Composer):
    """ruamel's composer, counting what each alias would expand to."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self._sizes: dict[int, int] = {}
        self._alias_nodes = 0

    def compose_document(self) -> Any:
        self._sizes = {}
        self._alias_nodes = 0
        return super().compose_document()

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            event = self.parser.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise BoundExceeded(None, None, f"the alias *{event.anchor} is inside the node it names "
                                    "(a cycle); an alias may only repeat a finished node", event.start_mark)
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise BoundExceeded(None, None, f"the alias *{event.anchor} takes the aliases in this file past "
                                    f"{MAX_ALIAS_NODES:,} repeated nodes (aliases of aliases: a 'billion laughs' "
                                    "file?); write the values out or use fewer levels of aliases",
                                    event.start_mark)
            return node
        node = super().compose_node(parent, index)
        if isinstance(node, SequenceNode):
            size = 1 + sum(self._sizes[id(v)] for v in node.value)
        elif isinstance(node, MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return node


def bounded(y: YAML) -> YAML:
    """Make ``y`` (a pure-Python loader) refuse deep nesting and alias bombs."""
    y.Composer = BoundedComposer
    y.max_depth = MAX_DEPTH
    return y


def load(y: YAML, text: str) -> Any:
    """Parse ``text`` with the bounded loader ``y``; every failure is :class:`YamlRefused`."""
    try:
        return y.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "syntax error"
        if isinstance(exc, MaxDepthExceededError):
            raise YamlRefused(f"YAML nested more than {MAX_DEPTH} levels deep; an inventory is a few "
                              "levels of mappings and lists", line) from None
        if isinstance(exc, BoundExceeded):
            raise YamlRefused(f"YAML: {what}", line) from None
        raise YamlRefused(f"YAML syntax error: {what}", line) from None
    except YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise YamlRefused(f"YAML error: {first}") from None
    except RecursionError:
        raise YamlRefused(f"YAML nested too deeply to read (more than {MAX_DEPTH} levels are refused)") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # a constructor's own failure on a scalar (a timestamp, a number, a tag's value)
        raise YamlRefused(f"YAML: a value cannot be read: {exc}") from None


def read_text(path: Path, what: str = "a region YAML file") -> str:
    """The text of ``path``: a regular UTF-8 file of at most :data:`MAX_BYTES`.
    Every failure is :class:`YamlRefused` with what to do."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise YamlRefused(f"is a directory; expected {what}")
        if not stat.S_ISREG(st.st_mode):
            raise YamlRefused(f"is not a regular file (a pipe or a device?); expected {what}")
        if st.st_size > MAX_BYTES:
            raise YamlRefused(f"is {st.st_size / 2**20:.1f} MiB; at most {MAX_BYTES // 2**20} MiB is read "
                              f"(a region of 200 hospitals is 0.2 MiB): is this {what}?")
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise YamlRefused(f"file not found; expected {what}") from None
    except IsADirectoryError:
        raise YamlRefused(f"is a directory; expected {what}") from None
    except PermissionError:
        raise YamlRefused("permission denied; the file must be readable by this user") from None
    except OSError as exc:
        raise YamlRefused(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_BYTES:
        raise YamlRefused(f"is larger than {MAX_BYTES // 2**20} MiB (it grew while being read); "
                          f"expected {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlRefused(f"not UTF-8 text (byte {exc.start}); save the file as UTF-8", line) from None
