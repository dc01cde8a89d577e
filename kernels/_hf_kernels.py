"""Hands the top-level module name `kernels` to the Hugging Face package of that name (see `__init__`)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types


def hand_over() -> None:
    """Load the `kernels` package found on sys.path outside any faircalib checkout as `sys.modules["kernels"]` (the
    import statement that ran our `__init__` then returns it). Without one, an empty module stands in: transformers
    probes the name by importing it (no exception handler), and reads a module without `__file__` or `__version__`
    as "not installed"."""
    # Every faircalib checkout on sys.path is skipped, not only this one: two of them (a second checkout or an
    # exported tree put in front to compare versions) would otherwise hand the name to each other without end.
    elsewhere = [p for p in sys.path if not os.path.isfile(os.path.join(p or os.curdir, "kernels", "_hf_kernels.py"))]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None:
        stand_in = types.ModuleType("kernels", "Placeholder: the Hugging Face `kernels` package is not installed; "
                                            "faircalib's kernels import as `faircalib.kernels`.")
        stand_in.__spec__ = importlib.machinery.ModuleSpec("kernels", None)  # importlib.util.find_spec reads it
        sys.modules["kernels"] = stand_in
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)
