"""Programmatic dependent launch (PDL, Hopper): a kernel launched with it may start while the kernel before it in the
stream is still running, and waits (`griddepcontrol.wait`) for that kernel to finish, its writes visible, before
its first memory access. What it saves is the gap between two kernels: the next kernel's launch and its programs'
start run under the previous kernel's last, uneven wave. The W4A4 linear is two short kernels back to back (the
activation pass, then the GEMM), and at 4096 tokens each persistent activation program quantizes only 6-7 tokens
(K = 4096, 660 programs on H100), so its start and tail are a visible share of the ~25 us pass.

Off unless FAIRCALIB_PDL=1 (read at import). Experimental: kept off until a benchmark shows it wins
(`benchmarks/explore_pdl_gpu.py`). Each kernel that takes it waits before any load or store, so a kernel launched
with PDL after any other kernel (ours or torch's) reads what that kernel wrote and never overwrites what it still
reads; and it signals its own dependents at its start (`griddepcontrol.launch_dependents`): they only take SM room
left free and wait in turn. Both instructions are no-ops in a kernel launched without PDL."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ENABLED = os.environ.get("FAIRCALIB_PDL", "0") == "1"


def active(device: torch.device) -> bool:
    """Whether kernels launched on `device` now take PDL: enabled, and a Hopper-or-later GPU (not the interpreter)."""
    return ENABLED and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def launch_options(on: bool) -> dict:
    """The launch keywords of a kernel that takes a `PDL` constexpr: the flag, and Triton's launch option."""
    return {"PDL": True, "launch_pdl": True} if on else {"PDL": False}


@triton.jit
def start(PDL: tl.constexpr):
    """First thing in a Triton kernel that takes PDL: wait for the previous kernel, then let the next one launch."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()

