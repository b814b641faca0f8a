"""What rendering produces for one node: files with their owner, mode and the
services a change to them restarts, plus the directories, packages and
services the node needs.  Deploys consume a Bundle; ``kontur render`` writes
it to disk.  Nothing here reads the clock or a random source: the same
inventory and secrets give byte-identical bundles."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
        paths (without the leading slash) and ``manifest.json``."""
        root = Path(out_dir) / self.node
        for f in self.files:
            target = root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content)
            target.chmod(0o600 if f.secret else int(f.mode, 8) & 0o644)
        (root / "manifest.json").write_text(json.dumps(self.manifest(), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return root
