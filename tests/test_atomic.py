"""Atomic file writes (`faircalib/atomic.py`)."""
import json
import stat

import pytest

from faircalib import atomic


def test_writes_the_whole_file_readable_by_others(tmp_path):
    path = atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(atomic.write_json(path, [1], indent=1).read_text()) == [1]
    assert atomic.write_text(tmp_path / "t.md", "x\n").read_text() == "x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "t.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(tmp_path):
    path = atomic.write_text(tmp_path / "report.md", "old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_file(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_the_temporary_file_keeps_the_suffix_and_directory(tmp_path):
    """Writers that choose a format by extension (matplotlib's savefig) see the target's suffix, and the rename
    stays within one file system."""
    seen = []
    atomic.write_file(tmp_path / "plots.png", lambda tmp: (seen.append(tmp), open(tmp, "wb").close()))
    assert seen[0].endswith(".png") and seen[0].startswith(str(tmp_path))
    assert (tmp_path / "plots.png").exists()
