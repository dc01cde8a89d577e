"""Kernel registry: op name -> {backend name -> implementation}, and the rule that picks one.

Backends:
- "reference": pure PyTorch (`*_reference.py`), the specification every kernel must match; runs anywhere.
- "triton": Triton kernels. On CUDA tensors they compile for the GPU; on CPU tensors they run only under
  `TRITON_INTERPRET=1` (set before Triton is imported), which is how CI exercises them.

Choice, in order: a `use_backend(...)` block; the env variable `FAIRCALIB_BACKEND`; otherwise "triton" for CUDA
tensors when Triton imports, "reference" for everything else.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from typing import Callable, Iterator

import torch

BACKENDS = ("reference", "triton")

_OPS: dict[str, dict[str, Callable]] = {}
# Modules holding Triton kernels: imported only when a Triton implementation is first asked for, so that
# `import faircalib.kernels` works (and stays fast) where Triton is absent.
_TRITON_MODULES: list[str] = []
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("faircalib_backend", default=None)


def _check_name(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"faircalib.kernels: unknown backend {name!r} from {source}; choose one of {BACKENDS}")
    return name


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports (it is absent on macOS and Windows)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend(device: torch.device | str | None = None) -> str:
    """The backend ops use for tensors on `device` (default: CUDA when present, else CPU)."""
    forced = _forced.get()
    if forced is not None:
        return forced
    env = os.environ.get("FAIRCALIB_BACKEND")
    if env:
        return _check_name(env, "FAIRCALIB_BACKEND")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "triton" if torch.device(device).type == "cuda" and triton_available() else "reference"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force one backend inside the block: `with use_backend("reference"): ...`."""
    token = _forced.set(_check_name(name, "use_backend()"))
    try:
        yield
    finally:
        _forced.reset(token)


def register(op: str, backend_name: str) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` as the `backend_name` implementation of `op`."""
    _check_name(backend_name, f"register({op!r})")

    def wrap(fn: Callable) -> Callable:
        _OPS.setdefault(op, {})[backend_name] = fn
        return fn

    return wrap


def register_triton_module(module: str) -> None:
    """Declare that importing `module` (absolute name) registers Triton implementations; imported lazily."""
    if module not in _TRITON_MODULES:
        _TRITON_MODULES.append(module)


def _load_triton_modules() -> None:
    for module in _TRITON_MODULES:
        importlib.import_module(module)


def implementation(op: str, device: torch.device) -> Callable:
    """The implementation of `op` for tensors on `device`, with a clear error when it cannot run there."""
    name = backend(device)
    impls = _OPS.get(op)
    if impls is None:
        raise KeyError(f"faircalib.kernels: no op named {op!r}; known ops: {sorted(_OPS)}")
    if name == "triton":
        if not triton_available():
            raise RuntimeError(f"faircalib.kernels.{op}: backend 'triton' was forced but Triton is not installed; "
                               "pip install triton, or use the 'reference' backend")
        if torch.device(device).type == "cpu" and not triton_interpreted():
            raise RuntimeError(f"faircalib.kernels.{op}: backend 'triton' on CPU tensors needs TRITON_INTERPRET=1 "
                               "set before Triton is imported; move the tensors to CUDA or use 'reference'")
        _load_triton_modules()
        if "triton" not in impls:
            raise NotImplementedError(f"faircalib.kernels.{op}: no Triton kernel registered; use 'reference'")
    return impls[name]
