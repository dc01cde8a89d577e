"""Hands the top-level module name `kernels` to the Hugging Face package of that name (see `__init__`)."""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def hand_over() -> None:
    """Load the `kernels` package found on sys.path outside this checkout's root as `sys.modules["kernels"]` (the
    import statement that ran our `__init__` then returns it); ModuleNotFoundError when there is none."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if os.path.abspath(p or os.curdir) != root])
    if spec is None:
        raise ModuleNotFoundError("No module named 'kernels' outside faircalib's checkout: the top-level name is the "
                                  "Hugging Face package's; faircalib's kernels import as `faircalib.kernels`",
                                  name="kernels")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    spec.loader.exec_module(module)
