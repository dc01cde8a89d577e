"""faircalib.kernels: INT4 quantization and calibration-loss ops for W4A4 calibration.

Every public op validates its inputs (errors name the op, the argument, the shape and the fix), then calls
`torch.ops.faircalib.<op>` (registered in `ops.py`), whose implementation is the one `registry.implementation`
picks for the input's device: the pure-PyTorch reference (`*_reference.py`, the specification) or the Triton
kernel (`quant.py`, `loss.py`). Backend control: `backend()`, `use_backend(name)`, env `FAIRCALIB_BACKEND`.

Numerics shared by every backend: `scale = clip * absmax / (2^(b-1) - 1)` in fp32, codes
`clamp(round_half_even(x / scale), -2^(b-1), 2^(b-1) - 1)`; an all-zero row/group gives scale 0, codes 0, output 0;
a row/group holding NaN or ±Inf gives scale NaN, codes 0 and NaN outputs.
"""
from __future__ import annotations

from . import registry
from .registry import BACKENDS, backend, use_backend

# Triton kernels register themselves on import; the registry imports them the first time a Triton
# implementation is requested, so this package imports on machines without Triton.
registry.register_triton_module(__name__ + ".quant")

__all__ = ["BACKENDS", "backend", "use_backend"]

# ---------------------------------------------------------------------------------------------------------
# Quantization ops: fake_quant_act, fake_quant_weight, quantize_act, quantize_weight, pack_int4, unpack_int4
# (quant_reference.py, quant.py)
# ---------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------
# Calibration-loss ops: weighted_mse, clip_search (loss_reference.py, loss.py)
# ---------------------------------------------------------------------------------------------------------
