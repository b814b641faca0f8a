"""What rendering produces for one node: files with their owner, mode and the
services a change to them restarts, plus the directories, packages and
services the node needs.  Deploys consume a Bundle; ``kontur render`` writes
it to disk.  Nothing here reads the clock or a random source: the same
inventory and secrets give byte-identical bundles."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import InvalidInput, OperationFailed

MANIFEST = "manifest.json"
#: kontur's temporary folders in --out while it writes (``.kontur-tmp-XXXX``)
TMP_PREFIX = ".kontur-tmp-"


@dataclass(frozen=True)
class RenderedFile:
    #: absolute path on the node
    path: str
    content: bytes
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"
    #: systemd units to restart when this file changes
    restarts: tuple[str, ...] = ()
    #: systemd units to reload (not restart) when this file changes
    reloads: tuple[str, ...] = ()
    #: a secret: --dry-run diffs never print its content
    secret: bool = False

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")


@dataclass(frozen=True)
class Directory:
    path: str
    mode: str = "0755"
    owner: str = "root"
    group: str = "root"


@dataclass
class Bundle:
    node: str
    role: str
    packages: list[str]
    files: list[RenderedFile] = field(default_factory=list)
    directories: list[Directory] = field(default_factory=list)
    #: units that must be enabled and running, in start order
    services: list[str] = field(default_factory=list)
    #: directories kontur owns entirely: files there that the bundle does not
    #: name and that match the glob are removed (e.g. Debian's /etc/orthanc/*.json)
    owned: dict[str, str] = field(default_factory=dict)
    #: facts the deploy needs that are not files (database name, role, ...)
    facts: dict[str, object] = field(default_factory=dict)

    def file(self, path: str) -> RenderedFile:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def manifest(self) -> dict:
        return {
            "node": self.node,
            "role": self.role,
            "packages": self.packages,
            "services": self.services,
            "owned": self.owned,
            "facts": self.facts,
            "directories": [asdict(d) for d in self.directories],
            "files": [
                {k: v for k, v in asdict(f).items() if k != "content"} | {"restarts": list(f.restarts), "reloads": list(f.reloads)}
                for f in self.files
            ],
        }

    def write(self, out_dir: Path) -> Path:
        """Write the bundle to ``out_dir/<node>/``: the files at their node
        paths (without the leading slash) and ``manifest.json`` (see
        :func:`write_out`)."""
        return write_out(out_dir, [self])[0]

    def _write_into(self, root: Path) -> None:
        """Into ``root`` (a new folder in kontur's own 0700 temporary folder):
        every file made new (O_EXCL, O_NOFOLLOW) with its final mode before a
        byte is written."""
        root.mkdir(mode=0o755)
        for f in self.files:
            rel = Path(f.path.lstrip("/"))
            if not rel.parts or ".." in rel.parts:
                raise OperationFailed(f"{self.node}: refusing to write the file {f.path!r} outside its folder")
            _make_file(root / rel, f.content, 0o600 if f.secret else int(f.mode, 8) & 0o644)
        _make_file(root / MANIFEST, (json.dumps(self.manifest(), indent=2, sort_keys=True, ensure_ascii=False)
                                     + "\n").encode(), 0o644)


def _make_file(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _is_node_folder(path: Path) -> bool:
    """A folder kontur wrote: a real directory with the manifest naming it."""
    manifest = path / MANIFEST
    if path.is_symlink() or not path.is_dir() or manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("node") == path.name
    except (OSError, ValueError, AttributeError):
        return False


def kontur_folders(out_dir: Path) -> list[str]:
    """The node folders of ``out_dir`` kontur wrote.  Refused (InvalidInput)
    when ``out_dir`` holds anything else: kontur replaces and removes only
    what it wrote."""
    out_dir = Path(out_dir)
    found, foreign = [], []
    for entry in sorted(out_dir.iterdir()):
        if entry.name.startswith(TMP_PREFIX):
            continue                    # kontur's, being written (or left by a killed run)
        (found if _is_node_folder(entry) else foreign).append(entry.name)
    if foreign:
        raise InvalidInput(
            f"--out {out_dir} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which kontur "
            f"did not write (kontur writes only node folders with their manifest.json there, and replaces "
            f"them); render into an empty or new folder, or remove those first")
    return found


def write_out(out_dir: Path, bundles: list["Bundle"], keep: set[str] | None = None) -> list[Path]:
    """Write each bundle to ``out_dir/<node>/`` and return those folders.

    ``out_dir`` must be new, empty, or hold only node folders kontur wrote.
    Each node folder is written whole into a fresh temporary folder inside
    ``out_dir`` (mode 0700, every file created new with its final mode, never
    through a link already there), then renamed into place; the folder it
    replaces is removed.  With ``keep`` (the region's nodes), node folders
    kontur wrote for nodes no longer in the region -- with their keys and
    passwords -- are removed too.  OS errors are OperationFailed, said plainly.
    """
    out_dir = Path(out_dir)
    try:
        return _write_out(out_dir, bundles, keep)
    except OSError as exc:
        where = exc.filename or out_dir
        raise OperationFailed(f"cannot write the rendered files to --out {out_dir}: {where}: "
                              f"{exc.strerror or exc}") from None


def _write_out(out_dir: Path, bundles: list["Bundle"], keep: set[str] | None) -> list[Path]:
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise InvalidInput(f"--out {out_dir} is {'a symbolic link' if out_dir.is_symlink() else 'not a folder'}; "
                           f"expected a folder for kontur's node folders (new or kontur's)")
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = set(kontur_folders(out_dir))
    written = []
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out_dir))
    try:
        for b in bundles:
            if not b.node or "/" in b.node or b.node.startswith("."):
                raise OperationFailed(f"refusing to write a node folder named {b.node!r}")
            b._write_into(tmp / b.node)
            final = out_dir / b.node
            if b.node in existing:
                os.rename(final, tmp / f".old-{b.node}")
            os.rename(tmp / b.node, final)
            written.append(final)
        if keep is not None:
            for name in sorted(existing - keep - {b.node for b in bundles}):
                os.rename(out_dir / name, tmp / f".old-{name}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written
