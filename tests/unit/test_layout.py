# SPDX-License-Identifier: AGPL-3.0-or-later
"""The layout: the runner, the renderer, the model and ``deploys/`` import no
CLI module, and "lab or production" is decided in one module
(:mod:`kontur.target`).

The imports are read with :mod:`ast` (every ``import`` statement, also those
inside functions), never executed: a lazy import of a CLI module in a runner
is an arrow too.
"""
from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("kontur", "deploys", "checks", "inventory")

#: modules of the runner, the renderer, the model and deploys/: no arrow from
#: them (direct or through other kontur modules) may reach a CLI module
CORE = ("kontur.deploy", "kontur.render", "deploys", "kontur.model", "kontur.inventory",
        "kontur.target", "kontur.reach", "kontur.nodeapi", "kontur.secrets", "kontur.health", "kontur.check")

#: the modules that read the lab's state: the lab itself and the one target
LAB_STATE = "kontur.lab.state"
MAY_READ_LAB = ("kontur.target", "kontur.lab", "kontur.testing")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (resolved relative imports; ``from X import Y``
    counts as X.Y when X.Y is a module, else X)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_cli(name: str) -> bool:
    """A CLI module: click's, the command modules, or any kontur module that imports click."""
    if name == "click" or name.startswith("click."):
        return True
    if name in ("kontur.cli", "kontur.commands", "kontur.lab.cli") or name.startswith("kontur.cli."):
        return True
    if name.startswith("kontur.") and name.endswith("_cli"):
        return True
    return name in GRAPH and any(i == "click" or i.startswith("click.") for i in GRAPH[name])


def _path_to_cli(start: str) -> list[str] | None:
    """The shortest chain of imports from ``start`` to a CLI module, or None."""
    seen = {start: None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        for nxt in sorted(GRAPH.get(cur, ())):
            if nxt in seen:
                continue
            seen[nxt] = cur
            if _is_cli(nxt):
                chain = [nxt]
                while seen[chain[-1]] is not None:
                    chain.append(seen[chain[-1]])
                return chain[::-1]
            if nxt in GRAPH:
                queue.append(nxt)
    return None


def test_the_walk_sees_the_modules_and_their_lazy_imports():
    # the walk must be able to fail: it sees what it judges
    assert "kontur.deploy" in MODULES and "deploys.node" in MODULES and "kontur.render.system" in MODULES
    assert _is_cli("kontur.cli.core") and _is_cli("kontur.lab.cli") and not _is_cli("kontur.model")
    assert "kontur.model" in GRAPH["kontur.render"]


def test_no_runner_renderer_model_or_deploys_module_reaches_a_cli_module():
    arrows = []
    for name in sorted(GRAPH):
        if _under(name, CORE):
            chain = [name, "click"] if _is_cli(name) else _path_to_cli(name)
            if chain:
                arrows.append(" -> ".join(chain))
    assert not arrows, "imports from the core into a CLI module:\n  " + "\n  ".join(arrows)


def test_lab_or_production_is_decided_in_the_target_module_only():
    readers = sorted(n for n, imports in GRAPH.items()
                     if LAB_STATE in imports and not _under(n, MAY_READ_LAB))
    assert not readers, f"only kontur.target (and kontur/lab/) read the lab's state ({LAB_STATE}): {readers}"
    lab_ssh = sorted(n for n, path in MODULES.items()
                     if "reach.lab(" in path.read_text() and not _under(n, MAY_READ_LAB + ("kontur.reach",)))
    assert not lab_ssh, f"the lab's SSH settings are chosen in kontur.target only: {lab_ssh}"


def _checks_target_attributes() -> set[str]:
    """What the audit's ``Target`` (checks/conftest.py) has: its methods and what ``__init__`` sets on self."""
    tree = ast.parse((REPO / "checks" / "conftest.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Target")
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(cls):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        names |= {t.attr for t in targets if isinstance(t, ast.Attribute)
                  and isinstance(t.value, ast.Name) and t.value.id == "self"}
    return names


def test_the_audits_controls_read_only_what_their_target_has():
    """Every ``target.X`` and ``target.where.X`` a control reads exists (an attribute renamed in the
    target module once failed ten controls in the example lab only)."""
    import dataclasses

    from kontur.target import Target
    has = _checks_target_attributes()
    where_has = {f.name for f in dataclasses.fields(Target)} | set(dir(Target))
    missing = []
    for path in sorted((REPO / "checks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            v = node.value
            if isinstance(v, ast.Name) and v.id == "target" and node.attr not in has:
                missing.append(f"{path.name}:{node.lineno}: target.{node.attr}")
            elif (isinstance(v, ast.Attribute) and v.attr == "where" and isinstance(v.value, ast.Name)
                  and v.value.id == "target" and node.attr not in where_has):
                missing.append(f"{path.name}:{node.lineno}: target.where.{node.attr}")
    assert "where" in has and "region" in has, sorted(has)
    assert not missing, missing
