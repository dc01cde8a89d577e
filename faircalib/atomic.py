"""Atomic file writes, the one way faircalib writes a file that someone may read: a reader sees the old file or the
whole new one, and a write that fails leaves the old file and no temporary file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def write_file(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Calls write(temporary path), a file in `path`'s directory whose name ends in `path`'s suffix (so writers that
    pick a format by extension, as matplotlib's savefig, pick the right one), then renames it over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600: the file is for others to read too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`text` (UTF-8) to `path`, atomically."""
    return write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value, indent: int = 2, sort_keys: bool = False) -> Path:
    """`value` as JSON (and a final newline) to `path`, atomically."""
    return write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")
