"""Atomic file writes for the zoo: a reader never sees a half-written tokenizer.json or train_log.json."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json(path: Path, payload) -> Path:
    """Writes `payload` as indented JSON to `path` through a temporary file in the same directory, then renames."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files ship with the package
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
