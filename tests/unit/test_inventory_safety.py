"""Issue 15: no inventory file and no two planners at once can break kontur.

* A file is read within bounds: an alias bomb, thousands of nested brackets,
  a cycle of aliases, a 50 MB file, a pipe, a symlink loop are each refused
  with a clear message (``line N:`` where there is a line) and exit 2, never
  a traceback, a MemoryError or minutes of parsing.
* ``kontur inventory`` edits are locked read-modify-writes: two at once both
  land; a read-only inventory is refused before anything changes; a symlinked
  inventory is edited through the link.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kontur import classifier, safeyaml
from kontur.inventory import InventoryError, load, load_text, parse_yaml

REPO = Path(__file__).resolve().parents[2]


def kontur(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def bomb(levels: int = 9, fan: int = 9) -> str:
    """'Billion laughs': each level an anchored list of ``fan`` aliases of the one before."""
    lines = ["l0: &l0 [" + ", ".join(['"lol"'] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def refused(text: str) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_text(text, "f.yaml")
    return [str(p) for p in info.value.problems]


# --- the parser's bounds ----------------------------------------------------

def test_an_alias_bomb_is_refused_while_it_is_read():
    # refused by the parser itself, before anything walks the document
    with pytest.raises(InventoryError):
        parse_yaml(bomb(), "f.yaml")
    found = refused(bomb())
    assert len(found) == 1 and "alias" in found[0] and "100,000" in found[0], found
    assert found[0].startswith("line "), found


def test_a_cycle_of_aliases_is_refused():
    found = refused("kontur: 1\nregion: &r\n  name: x\n  loop: *r\n")
    assert len(found) == 1 and "cycle" in found[0] and found[0].startswith("line 4:"), found


def test_thousands_of_nested_brackets_are_refused_not_a_recursion_error():
    found = refused("kontur: " + "[" * 3000 + "]" * 3000 + "\n")
    assert len(found) == 1 and f"more than {safeyaml.MAX_DEPTH} levels" in found[0], found
    assert found[0].startswith("line 1:")
    found = refused("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "x: 1\n")
    assert len(found) == 1 and "levels" in found[0], found


def test_aliases_a_planner_would_write_are_accepted(region_file):
    # a shared transfer window, repeated for every hospital that replicates
    text = region_file.read_text(encoding="utf-8")
    text = text.replace('windows: ["20:00-07:00"]', 'windows: &night ["20:00-07:00"]', 1)
    assert text.count("&night") == 1 and "windows:" in text
    lines = []
    for line in text.splitlines():
        if line.strip().startswith("windows:") and "&night" not in line:
            line = line[: line.index("windows:")] + "windows: *night"
        lines.append(line)
    region_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    region = load(region_file)
    assert region.hospitals["onco"].replication.windows
    # and many of them within the bound: 2,000 aliases of a 20-node mapping
    doc = "base: &b {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\nlist:\n" + "  - *b\n" * 2000
    assert len(parse_yaml(doc, "f.yaml")["list"]) == 2000


def test_a_huge_file_is_refused_without_being_read(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:          # sparse: 50 MB on paper, nothing on disk
        fh.truncate(50 * 2**20)
    with pytest.raises(InventoryError) as info:
        load(big)
    (msg,) = [str(p) for p in info.value.problems]
    assert "50.0 MiB" in msg and f"at most {safeyaml.MAX_BYTES // 2**20} MiB" in msg, msg


def test_a_generated_region_of_200_hospitals_fits_the_bounds():
    from kontur.regiongen import generate_region
    text = generate_region(200)
    assert len(text.encode()) < safeyaml.MAX_BYTES / 10
    assert isinstance(parse_yaml(text, "gen.yaml"), dict)


def test_a_symlink_loop_is_a_message_not_a_traceback(tmp_path):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    with pytest.raises(InventoryError) as info:
        load(loop)
    assert "cannot be read" in str(info.value.problems[0])


@pytest.mark.parametrize("case", ["bomb", "deep", "cycle", "huge", "pipe", "loop", "directory", "not-utf8"])
def test_validate_refuses_each_bad_file_with_exit_2(tmp_path, case):
    p = tmp_path / "region.yaml"
    expect = {"bomb": "alias", "deep": "levels deep", "cycle": "cycle", "huge": "MiB", "pipe": "not a regular file",
              "loop": "cannot be read", "directory": "is a directory", "not-utf8": "not UTF-8"}[case]
    if case == "bomb":
        p.write_text(bomb(), encoding="utf-8")
    elif case == "deep":
        p.write_text("[" * 3000 + "]" * 3000 + "\n", encoding="utf-8")
    elif case == "cycle":
        p.write_text("a: &a\n  b: *a\n", encoding="utf-8")
    elif case == "huge":
        with open(p, "wb") as fh:
            fh.truncate(50 * 2**20)
    elif case == "pipe":
        os.mkfifo(p)                      # nobody writes: reading it would wait for ever
    elif case == "loop":
        p.symlink_to(p)
    elif case == "directory":
        p.mkdir()
    elif case == "not-utf8":
        p.write_bytes(b"kontur: 1\nregion: \xff\xfe\n")
    r = kontur("validate", "-i", str(p), timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    if case in ("bomb", "deep", "cycle", "not-utf8"):
        assert "  line " in r.stderr, r.stderr


def test_a_classifier_file_is_read_within_the_same_bounds(tmp_path):
    with pytest.raises(classifier.ClassifierError) as info:
        classifier.parse_yaml(bomb() + "codes:\n  A01: x\n", "c.yaml", None)
    assert "alias" in info.value.problems[0], info.value.problems
    # a name that is an alias of a huge list must not be expanded into a string
    with pytest.raises(classifier.ClassifierError) as info:
        classifier.parse_yaml(bomb(7, 8) + "codes:\n  A01: *l6\n", "c.yaml", None)
    assert "alias" in info.value.problems[0] and "line" in info.value.problems[0], info.value.problems
    with pytest.raises(classifier.ClassifierError) as info:
        classifier.parse_yaml("codes: " + "[" * 3000 + "]" * 3000, "c.yaml", None)
    assert "levels" in info.value.problems[0], info.value.problems
    huge = tmp_path / "c.csv"
    with open(huge, "wb") as fh:
        fh.truncate(50 * 2**20)
    with pytest.raises(classifier.ClassifierError) as info:
        classifier.read(huge)
    assert "MiB" in info.value.problems[0]


# --- locked read-modify-write -------------------------------------------------

def _add_modality(path: Path, aet: str, host: str) -> list[str]:
    return ["inventory", "add-modality", "onco", "-i", str(path), "--aet", aet, "--host", host, "--modality", "CT"]


def _aets(path: Path) -> set[str]:
    return {m.aet for h in load(path).hospitals.values() for m in h.modalities}


#: a `kontur` that imports everything, says so, and runs when its stdin says go
_HELD_KONTUR = ("import sys\nfrom kontur.cli import main\nprint('ready', flush=True)\n"
                "sys.stdin.readline()\nsys.exit(main(sys.argv[1:]))\n")


def test_two_planners_adding_at_once_both_edits_land(region_file):
    """Two `kontur inventory add-modality` processes, started, loaded and then
    released together (a line on their stdin), five rounds."""
    for rnd in range(5):
        aets = [f"R{rnd}_A", f"R{rnd}_B"]
        procs = [subprocess.Popen([sys.executable, "-c", _HELD_KONTUR,
                                   *_add_modality(region_file, aets[i], f"10.42.1.{210 + 2 * rnd + i}")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=REPO)
                 for i in range(2)]
        try:
            for p in procs:
                assert p.stdout.readline().strip() == "ready", p.stderr.read()
            for p in procs:                # both are past their imports: let them go at once
                p.stdin.write("go\n")
                p.stdin.flush()
            results = [p.communicate(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        assert [p.returncode for p in procs] == [0, 0], (rnd, results)
        assert set(aets) <= _aets(region_file), f"round {rnd}: an edit was lost"


def test_a_read_only_inventory_is_refused_before_any_change(region_file):
    before = region_file.read_bytes()
    region_file.chmod(0o444)
    r = kontur(*_add_modality(region_file, "ONCO_RO", "10.42.1.220"))
    assert r.returncode == 2, r.stderr
    assert "read-only" in r.stderr and "nothing was changed" in r.stderr and "Traceback" not in r.stderr
    assert region_file.read_bytes() == before and (region_file.stat().st_mode & 0o777) == 0o444
    assert sorted(p.name for p in region_file.parent.iterdir()) == ["classifier", "region.yaml"]


def test_a_symlinked_inventory_is_edited_through_the_link(region_file, tmp_path):
    link_dir = tmp_path / "elsewhere"
    link_dir.mkdir()
    link = link_dir / "region.yaml"
    link.symlink_to(region_file)
    region_file.chmod(0o640)
    r = kontur(*_add_modality(link, "ONCO_LINK", "10.42.1.221"))
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and link.resolve() == region_file
    assert "ONCO_LINK" in region_file.read_text(encoding="utf-8")
    assert (region_file.stat().st_mode & 0o777) == 0o640
    assert sorted(p.name for p in link_dir.iterdir()) == ["region.yaml"]
    assert sorted(p.name for p in region_file.parent.iterdir()) == ["classifier", "elsewhere", "region.yaml"]
