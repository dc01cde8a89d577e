"""Programmatic dependent launch (PDL, sm_90+) for the deployment kernels: the activation pass and the W4A4 GEMM.

A kernel launched with `launch_pdl=True` may be scheduled before the kernel ahead of it in the stream has finished.
Each such kernel starts with `wait_for_previous_kernel`, which holds its programs until that kernel is done and its
writes are visible, before any global load or store: results are those of a plain launch, whatever the kernel
before wrote or still reads (a fresh output buffer may be memory it was still reading). What overlaps is the
launch and the programs' start-up, against the previous kernel's tail.

`ENABLED` switches it (environment `FAIRCALIB_PDL=1`/`0` at import); launches on CPU tensors (the interpreter, which
cannot run these instructions) and on GPUs before sm_90 never use it.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ENABLED = os.environ.get("FAIRCALIB_PDL", "0") == "1"


@triton.jit
def wait_for_previous_kernel(PDL: tl.constexpr):
    """With PDL: wait for the previous kernel (module doc), then let the next one launch. The next kernel may launch
    once every program of this one has passed here, so all of them are resident or done by then and its programs
    cannot take an SM this kernel still needs. Without PDL: nothing."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@functools.lru_cache(maxsize=None)
def _supported(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def pdl_launch(device: torch.device) -> dict:
    """The launch arguments of a kernel taking `PDL: tl.constexpr` (`wait_for_previous_kernel`) on `device`."""
    if ENABLED and device.type == "cuda" and _supported(device.index or 0):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}
