"""faircalib.kernels' public ops (the package's `__init__` re-exports them): INT4 quantization, calibration-loss and
W4A4 deployment ops.

Every public op validates its inputs (errors name the op, the argument, the shape and the fix), then calls
`torch.ops.faircalib.<op>` (registered in `ops.py`), whose implementation is the one `registry.implementation`
picks for the input's device: the pure-PyTorch reference (`*_reference.py`, the specification) or the Triton
kernel (`quant.py`, `loss.py`). Backend control: `backend()`, `use_backend(name)`, env `FAIRCALIB_BACKEND`.

Numerics shared by every backend: `scale = clip * absmax / (2^(b-1) - 1)` in fp32, codes
`clamp(round_half_even(x / scale), -2^(b-1), 2^(b-1) - 1)`; an all-zero row/group gives scale 0, codes 0, output 0;
a row/group holding NaN or ±Inf gives scale NaN, codes 0 and NaN outputs.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

from . import ops, quant_reference, registry
from .registry import BACKENDS, backend, use_backend
from .validation import (check_bits, check_broadcastable, check_dims, check_float_tensor, check_group_size,
                         check_min_dims, check_same_device)

# Triton kernels register themselves on import; the registry imports them the first time a Triton
# implementation is requested, so this package imports on machines without Triton.
registry.register_triton_module(__package__ + ".quant")

__all__ = ["BACKENDS", "backend", "use_backend", "fake_quant_act", "fake_quant_weight", "quantize_act",
           "quantize_weight", "pack_int4", "unpack_int4"]

ClipRatio = Union[float, torch.Tensor]

# ---------------------------------------------------------------------------------------------------------
# Quantization ops: fake_quant_act, fake_quant_weight, quantize_act, quantize_weight, pack_int4, unpack_int4
# (quant_reference.py, quant.py)
# ---------------------------------------------------------------------------------------------------------

def _clip_tensor(op: str, name: str, clip: object, like: torch.Tensor, scale_shape: tuple[int, ...]) -> torch.Tensor:
    """A clip ratio as a tensor on `like`'s device: a Python number becomes a 0-d fp32 tensor; a tensor (possibly
    learnable) must be floating point and broadcast to the per-group scale shape."""
    if isinstance(clip, (int, float)) and not isinstance(clip, bool):
        if not 0 < clip < float("inf"):  # a tensor's values are not checked: that would sync with the GPU
            raise ValueError(f"faircalib.kernels.{op}: {name}={clip} must be a finite number > 0 (1 = plain absmax)")
        # a fill, not a host-to-device copy, so the op can be captured in a CUDA graph
        return torch.full((), float(clip), dtype=torch.float32, device=like.device)
    check_float_tensor(op, name, clip)
    check_same_device(op, "the input", like, name, clip)
    check_broadcastable(op, name, clip, scale_shape, "per-group scale")
    return clip


def fake_quant_act(x: torch.Tensor, bits: int = 4, clip_ratio: ClipRatio = 1.0) -> torch.Tensor:
    """Per-token symmetric dynamic quantize -> dequantize: x [..., K] float -> [..., K] x.dtype.

    One scale per row (last dim): `scale = clip_ratio * absmax / (2^(bits-1) - 1)` (fp32),
    `y = clamp(round_half_even(x / scale), -2^(bits-1), 2^(bits-1) - 1) * scale`.
    `clip_ratio`: a float or a (learnable) tensor broadcastable to `[..., 1]`.
    Differentiable: dL/dx is straight-through where `-2^(bits-1) <= x / scale <= 2^(bits-1) - 1` and 0 where the
    code clamps; dL/dclip_ratio = sum_row(g * dy/ds) * absmax / (2^(bits-1) - 1) with dy/ds = round(x/s) - x/s
    inside and the clamped code outside (LSQ), absmax held constant. Full spec: `quant_reference.py`.
    """
    op = "fake_quant_act"
    check_float_tensor(op, "x", x)
    check_min_dims(op, "x", x, 1)
    check_bits(op, bits)
    clip = _clip_tensor(op, "clip_ratio", clip_ratio, x, (*x.shape[:-1], 1))
    return ops.fake_quant_act(x, clip, bits)


def _check_weight_args(op: str, w: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> None:
    """The checks every weight-quantization op makes: float [N, K] weight, bits, group size, symmetric flag."""
    check_float_tensor(op, "w", w)
    check_dims(op, "w", w, 2)
    check_bits(op, bits)
    check_group_size(op, group_size, w.shape[1])
    if not isinstance(symmetric, bool):
        raise TypeError(f"faircalib.kernels.{op}: symmetric must be a bool, got {symmetric!r}")


def fake_quant_weight(w: torch.Tensor, bits: int = 4, group_size: int = -1, symmetric: bool = True,
                      clip_ratio: Union[ClipRatio, tuple[ClipRatio, ClipRatio]] = 1.0) -> torch.Tensor:
    """Weight quantize -> dequantize: w [N, K] float -> [N, K] w.dtype, one scale per output channel
    (`group_size=-1`) or per group of `group_size` along K.

    Symmetric: as `fake_quant_act` per group. Asymmetric (`symmetric=False`): the range
    `[clip_min * min(min(w), 0), clip_max * max(max(w), 0)]` maps onto `2^bits - 1` steps with an integer zero
    point, `y = (code - zero) * scale`. `clip_ratio`: a float or tensor broadcastable to `[N, G]` (G groups per row,
    1 per channel), or for asymmetric also a pair `(clip_max, clip_min)` (FlatQuant's two sigmoid logits).
    Differentiable in `w` and every clip tensor; exact formulas in `quant_reference.py`.
    """
    op = "fake_quant_weight"
    _check_weight_args(op, w, bits, group_size, symmetric)
    scale_shape = (w.shape[0], quant_reference.num_groups(w.shape[1], group_size))
    if isinstance(clip_ratio, tuple):
        if symmetric or len(clip_ratio) != 2:
            raise ValueError(f"faircalib.kernels.{op}: clip_ratio as a tuple must be a pair (clip_max, clip_min) "
                             f"with symmetric=False; got {len(clip_ratio)} ratio(s) with symmetric={symmetric}")
        clip_max = _clip_tensor(op, "clip_ratio[0]", clip_ratio[0], w, scale_shape)
        clip_min = _clip_tensor(op, "clip_ratio[1]", clip_ratio[1], w, scale_shape)
    else:
        clip_max = clip_min = _clip_tensor(op, "clip_ratio", clip_ratio, w, scale_shape)
    return ops.fake_quant_weight(w, clip_max, clip_min, bits, group_size, symmetric)


def quantize_act(x: torch.Tensor, bits: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric quantization: x [..., K] float -> (codes int8 [..., K] in [-2^(bits-1), 2^(bits-1)-1],
    scales fp32 [..., 1]); `codes * scales` is `fake_quant_act(x, bits)`."""
    op = "quantize_act"
    check_float_tensor(op, "x", x)
    check_min_dims(op, "x", x, 1)
    check_bits(op, bits)
    return ops.quantize_act(x, bits)


def quantize_weight(w: torch.Tensor, bits: int = 4, group_size: int = -1, symmetric: bool = True):
    """w [N, K] float -> (codes int8 [N, K], scales fp32 [N, G]) when symmetric, else (codes, scales,
    zeros int8 [N, G]); codes and zeros lie in [-2^(bits-1), 2^(bits-1)-1] and `(codes - zeros) * scales`
    (per group) is `fake_quant_weight(w, bits, group_size, symmetric)`."""
    op = "quantize_weight"
    _check_weight_args(op, w, bits, group_size, symmetric)
    codes, scales, zeros = ops.quantize_weight(w, bits, group_size, symmetric)
    return (codes, scales) if symmetric else (codes, scales, zeros)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """codes int8 [..., K] in [-8, 7] -> uint8 [..., ceil(K/2)]. Byte i holds element 2i in its low nibble and
    element 2i+1 in its high nibble, each a 4-bit two's complement; an odd K is padded with a 0 code.
    Checks the code range (one reduction over `codes`)."""
    op = "pack_int4"
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.int8:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"faircalib.kernels.{op}: codes must be an int8 tensor (e.g. from quantize_act), got {got}")
    check_min_dims(op, "codes", codes, 1)
    if codes.numel() and (codes.min() < -8 or codes.max() > 7):
        raise ValueError(f"faircalib.kernels.{op}: codes of shape {tuple(codes.shape)} hold values outside the "
                         f"int4 range [-8, 7]; quantize with bits=4")
    return ops.pack_int4(codes)


def unpack_int4(packed: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """packed uint8 [..., P] -> codes int8 [..., k] (default k = 2P; give the original K when it was odd),
    the inverse of `pack_int4`."""
    op = "unpack_int4"
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"faircalib.kernels.{op}: packed must be a uint8 tensor from pack_int4, got {got}")
    check_min_dims(op, "packed", packed, 1)
    p = packed.shape[-1]
    k = 2 * p if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not max(2 * p - 1, 0) <= k <= 2 * p:
        raise ValueError(f"faircalib.kernels.{op}: k={k!r} does not fit packed of shape {tuple(packed.shape)}; "
                         f"k must be {2 * p} or {max(2 * p - 1, 0)} (the unpacked length)")
    return ops.unpack_int4(packed, k)

# ---------------------------------------------------------------------------------------------------------
# Calibration-loss ops: weighted_mse, clip_search (loss_reference.py, loss.py)
# ---------------------------------------------------------------------------------------------------------
from .validation import check_same_shape  # noqa: E402

registry.register_triton_module(__package__ + ".loss")
__all__ += ["weighted_mse", "clip_search"]


def _row_weights(op: str, weights: torch.Tensor | None, x: torch.Tensor, x_name: str) -> torch.Tensor:
    """Per-row weights checked against x's rows x.shape[:-1]; None means every row weighs 1. A weight with x's
    number of dims and last dim 1 (keepdim form, e.g. [B, L, 1] for x [B, L, D]) is read without that dim."""
    if weights is None:
        return torch.ones((), dtype=torch.float32, device=x.device)
    check_float_tensor(op, "weights", weights)
    if weights.dim() == x.dim() and weights.shape[-1] == 1:
        weights = weights.squeeze(-1)
    check_same_device(op, x_name, x, "weights", weights)
    check_broadcastable(op, "weights", weights, tuple(x.shape[:-1]), f"row ({x_name}.shape[:-1])")
    return weights


def _check_choice(op: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"faircalib.kernels.{op}: {name}={value!r} is not supported; use one of {choices}")


def weighted_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None,
                 reduction: str = "sum") -> torch.Tensor:
    """Row-weighted squared error, the Stage II loss of FAIR-Calib: `sum_i weights_i * ||a_i - b_i||^2`.

    a, b: [*rows, D] float (any dtypes, same shape), rows i index a.shape[:-1] and the last dim is reduced;
    weights: float, broadcastable to [*rows] (e.g. a position prior [L] against hidden states [B, L, D]; never
    expanded in memory), None for 1. reduction "sum" -> fp32 scalar, "none" -> fp32 [*rows] (weighted per-row terms).
    fp32 accumulation, bitwise deterministic (no atomics). Differentiable in a and b (dL/da = 2 w g (a - b),
    dL/db = -dL/da, in their dtypes); not in weights.
    """
    op = "weighted_mse"
    check_float_tensor(op, "a", a)
    check_float_tensor(op, "b", b)
    check_min_dims(op, "a", a, 1)
    check_same_shape(op, "a", a, "b", b)
    check_same_device(op, "a", a, "b", b)
    _check_choice(op, "reduction", reduction, ("sum", "none"))
    return ops.weighted_mse(a, b, _row_weights(op, weights, a, "a"), reduction)


def clip_search(x: torch.Tensor, ratios, bits: int = 4, weights: torch.Tensor | None = None,
                group_size: int | None = None, reduce: str = "sum") -> torch.Tensor:
    """Quantization error of every candidate clip ratio, from one read of x.

    For each ratio r: `err(r) = sum (fake_quant(x, clip=r) - x)^2` with symmetric `bits`-bit quantization
    (`scale = r * absmax / (2^(bits-1) - 1)`, round half to even, clamp), evaluated in fp32 per group of the last
    dim and multiplied by the group's row weight. x: [*rows, K] float; ratios: [C] float tensor (or sequence) in
    (0, 1]; weights: float, broadcastable to [*rows], None for 1; group_size: None or -1 (one group per row, as
    per-token activations or per-channel weights) or a divisor of K (per-group weights).
    reduce "sum" -> fp32 [C]; "none" -> fp32 [*rows, G, C] (G groups per row), to pick a ratio per row or group.
    An all-zero group has error 0; a group holding NaN/Inf has error NaN. Not differentiable.
    """
    op = "clip_search"
    check_float_tensor(op, "x", x)
    check_min_dims(op, "x", x, 1)
    check_bits(op, bits)
    if not isinstance(ratios, torch.Tensor):
        ratios = torch.tensor(ratios, dtype=torch.float32, device=x.device)
    check_float_tensor(op, "ratios", ratios)
    check_dims(op, "ratios", ratios, 1)
    check_same_device(op, "x", x, "ratios", ratios)
    if ratios.numel() and not bool(((ratios > 0) & (ratios <= 1)).all()):
        raise ValueError(f"faircalib.kernels.{op}: ratios must lie in (0, 1], got values in "
                         f"[{ratios.min().item()}, {ratios.max().item()}] (shape {tuple(ratios.shape)})")
    group_size = -1 if group_size is None else group_size
    check_group_size(op, group_size, x.shape[-1])
    _check_choice(op, "reduce", reduce, ("sum", "none"))
    # Not differentiable: detached, so a search over a weight Parameter returns a plain tensor.
    return ops.clip_search(x.detach(), ratios.detach().float(), bits, _row_weights(op, weights, x, "x").detach(),
                           group_size, reduce)


# ---------------------------------------------------------------------------------------------------------
# W4A4 deployment ops: quantize_act_packed, w4a4_matmul and the GEMM weight layout (gemm_reference.py, gemm.py)
# ---------------------------------------------------------------------------------------------------------
from .gemm_reference import GEMM_K_GROUP, padded_k, pack_weight_for_gemm, unpack_weight_for_gemm  # noqa: E402

registry.register_triton_module(__package__ + ".gemm")
__all__ += ["quantize_act_packed", "w4a4_matmul", "w4a4_matmul_stacked", "w4a4_matmul_swiglu", "swiglu_in_epilogue",
            "int8_matmul", "unpack_weight_int8", "padded_k", "pack_weight_for_gemm", "unpack_weight_for_gemm"]


def _check_square(op: str, name: str, t: torch.Tensor | None, x: torch.Tensor) -> None:
    if t is None:
        return
    check_float_tensor(op, name, t)
    check_same_device(op, "x", x, name, t)
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"faircalib.kernels.{op}: {name} must be a square [n, n] factor, got shape {tuple(t.shape)}")


@torch._dynamo.assume_constant_result
def _channel_scale_pass(device_type: str, n1: int, n2: int, dtype: torch.dtype) -> bool:
    """Whether a compiled graph computes the channel scale (and gate) of an (n1, n2) transform itself: where the
    Triton kernels would take x without them to the split kernel, which needs them applied first (by a pass of
    its own in eager code, `gemm.scaled_input`; with them, K = 12288 keeps the slower whole tile). Called while
    torch.compile traces, whose result is taken as a constant: the backend choice is fixed when a graph is
    compiled."""
    if device_type != "cuda" or registry.backend(torch.device(device_type)) != "triton":
        return False
    from . import gemm

    return gemm.act_path(n1, n2, dtype) == "split"


def quantize_act_packed(x: torch.Tensor, bits: int = 4, clip_ratio: ClipRatio | None = None,
                        channel_scale: torch.Tensor | None = None, left: torch.Tensor | None = None,
                        right: torch.Tensor | None = None, gate: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Online transform + per-token quantization, the activation half of a W4A4 linear, in one pass:
    x [..., K] float -> (codes int8 [..., K], scales fp32 [..., 1]) of x' = leftᵀ · (X ⊙ C) · right, with X and C
    (`channel_scale [K]`) viewed as [n1, n2] (`left [n1, n1]`, `right [n2, n2]`, n1·n2 = K; each part optional).
    Codes stay one per byte: they are the A operand of `w4a4_matmul`. Numerics as `quantize_act` with
    `scale = clip_ratio · absmax / (2^(bits-1) - 1)`; `clip_ratio` is a float or a 0-d tensor.
    `gate` (same shape and dtype as x): quantize silu(gate) · x instead (a SwiGLU's down-projection input, computed
    as `F.silu(gate) * x` is, without writing it to memory)."""
    op = "quantize_act_packed"
    check_float_tensor(op, "x", x)
    check_min_dims(op, "x", x, 1)
    check_bits(op, bits)
    k = x.shape[-1]
    _check_width(op, "x", x)
    if gate is not None:
        check_float_tensor(op, "gate", gate)
        check_same_device(op, "x", x, "gate", gate)
        if gate.shape != x.shape or gate.dtype != x.dtype:
            raise ValueError(f"faircalib.kernels.{op}: gate must match x: got gate {tuple(gate.shape)} "
                             f"{gate.dtype}, x {tuple(x.shape)} {x.dtype}")
    _check_square(op, "left", left, x)
    _check_square(op, "right", right, x)
    n1 = left.shape[0] if left is not None else (k // right.shape[0] if right is not None else 1)
    n2 = right.shape[0] if right is not None else k // n1
    if n1 * n2 != k:
        raise ValueError(f"faircalib.kernels.{op}: factor sizes {n1} x {n2} do not multiply to K={k} of x "
                         f"{tuple(x.shape)}; give factors with n1 * n2 = K (e.g. 56 x 64 for K=3584)")
    if channel_scale is not None:
        check_float_tensor(op, "channel_scale", channel_scale)
        if tuple(channel_scale.shape) != (k,):
            raise ValueError(f"faircalib.kernels.{op}: channel_scale must have shape ({k},), got "
                             f"{tuple(channel_scale.shape)}")
    clip = None if clip_ratio is None else _clip_tensor(op, "clip_ratio", clip_ratio, x, ())
    factor = left if left is not None else right
    if channel_scale is not None and factor is not None and torch.compiler.is_compiling() and \
            _channel_scale_pass(x.device.type, n1, n2, factor.dtype):
        # The kernel would run this product as a pass of its own that re-reads x; in the traced graph Inductor
        # fuses it into x's producer (the SwiGLU of a down projection) instead. Same formula: fp32 product
        # rounded to the factors' dtype.
        scaled = x if gate is None else torch.nn.functional.silu(gate) * x
        x, gate, channel_scale = (scaled.float() * channel_scale.float()).to(factor.dtype), None, None
    if gate is None:
        codes, scales = ops.quantize_act_packed(x.reshape(-1, k), channel_scale, left, right, clip, bits)
    else:
        codes, scales = ops.quantize_swiglu_packed(gate.reshape(-1, k), x.reshape(-1, k), channel_scale, left,
                                                   right, clip, bits)
    return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)


def w4a4_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """y = (A · Wᵀ, an exact int32 sum) · a_scale[m] · w_scale[n] (+ bias[n]), fp32 epilogue, cast to out_dtype.

    a_codes int8 [..., K] (any int8 values; from `quantize_act_packed`), a_scales fp32 [..., 1],
    w_packed int8 [N, padded_k(K) / 2] from `pack_weight_for_gemm` (4-bit codes, per-channel),
    w_scales fp32 [N] or [N, 1], bias [N] -> [..., N] out_dtype."""
    k = _check_gemm_args("w4a4_matmul", a_codes, a_scales, "w_packed", w_packed, 2, w_scales, bias, out_dtype)
    out = ops.w4a4_matmul(a_codes.reshape(-1, k), a_scales.reshape(-1, 1), w_packed, w_scales.reshape(-1), bias,
                          out_dtype)
    return out.reshape(*a_codes.shape[:-1], w_packed.shape[0])


def unpack_weight_int8(w_packed: torch.Tensor) -> torch.Tensor:
    """w_packed int8 [N, padded_k(K) / 2] (`pack_weight_for_gemm`) -> int8 codes [N, padded_k(K)] in natural order,
    the K tail zero: `int8_matmul`'s weight (the unpack pass `w4a4_matmul` runs on every call, done once)."""
    if not isinstance(w_packed, torch.Tensor) or w_packed.dtype != torch.int8:
        got = w_packed.dtype if isinstance(w_packed, torch.Tensor) else type(w_packed).__name__
        raise TypeError(f"faircalib.kernels.unpack_weight_int8: w_packed must be a torch.int8 tensor, got {got}")
    check_dims("unpack_weight_int8", "w_packed", w_packed, 2)
    if w_packed.shape[1] % (GEMM_K_GROUP // 2):
        raise ValueError(f"faircalib.kernels.unpack_weight_int8: w_packed {tuple(w_packed.shape)} is not in the GEMM "
                         f"layout (rows of a multiple of {GEMM_K_GROUP // 2} bytes); pack with pack_weight_for_gemm")
    return ops.unpack_weight_int8(w_packed)


def w4a4_matmul_stacked(a_codes: torch.Tensor, a_scales: torch.Tensor, w_packed: Sequence[torch.Tensor],
                        w_scales: torch.Tensor, bias: torch.Tensor | None = None,
                        out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`w4a4_matmul` against several packed weights of one K stacked along N, as one GEMM: the linears that read
    the same input (q/k/v, gate/up) run together, and their outputs are column slices of the result.
    w_packed: a list of int8 [N_i, padded_k(K) / 2] (`pack_weight_for_gemm`); w_scales fp32 [sum N_i] and bias
    [sum N_i] in the same order -> [..., sum N_i] out_dtype. The packed weights are not concatenated: each is
    unpacked into its rows of the call's transient int8 operand."""
    op = "w4a4_matmul_stacked"
    if isinstance(w_packed, torch.Tensor) or not w_packed:
        raise TypeError(f"faircalib.kernels.{op}: w_packed must be a non-empty list of packed weights; for one "
                        f"weight use w4a4_matmul")
    for i, w in enumerate(w_packed):
        _check_int8_matrix(op, f"w_packed[{i}]", w)
    n = sum(w.shape[0] for w in w_packed)
    k = _check_gemm_args(op, a_codes, a_scales, "w_packed[0]", w_packed[0], 2, w_scales, bias, out_dtype, n)
    for i, w in enumerate(w_packed[1:], start=1):
        if w.shape[1] != padded_k(k) // 2:
            raise ValueError(f"faircalib.kernels.{op}: w_packed[{i}] {tuple(w.shape)} does not match K={k} of "
                             f"a_codes: expected [N_{i}, {padded_k(k) // 2}]; make it with pack_weight_for_gemm")
        check_same_device(op, "a_codes", a_codes, f"w_packed[{i}]", w)
    out = ops.w4a4_matmul_stacked(a_codes.reshape(-1, k), a_scales.reshape(-1, 1), list(w_packed),
                                  w_scales.reshape(-1), bias, out_dtype)
    return out.reshape(*a_codes.shape[:-1], n)


@torch._dynamo.assume_constant_result
def _swiglu_epilogue_runs(device_type: str, k: int) -> bool:
    if device_type != "cuda" or registry.backend(torch.device(device_type)) != "triton":
        return False
    from . import gemm

    return gemm.swiglu_in_epilogue(torch.device(device_type), k)


def swiglu_in_epilogue(device: torch.device, k: int) -> bool:
    """Whether `w4a4_matmul_swiglu` on `device` (the active backend's kernels) forms the SwiGLU in the GEMM's
    epilogue for inputs of width k: the Triton backend on a Hopper GPU. Elsewhere it runs the stacked GEMM, then the
    SwiGLU as PyTorch ops inside the op, where a compiled graph can no longer fuse them with anything. Under
    torch.compile the answer is fixed when a graph is traced (as `_channel_scale_pass`)."""
    return _swiglu_epilogue_runs(device.type, k)


def w4a4_matmul_swiglu(a_codes: torch.Tensor, a_scales: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                       w_scales: torch.Tensor, bias: torch.Tensor | None = None,
                       channel_scale: torch.Tensor | None = None,
                       out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """A SwiGLU block's gate and up projections and the SwiGLU between them, one op: silu(gate) · up (·
    channel_scale), where gate and up are the W4A4 GEMMs of a_codes against w_gate and w_up (packed, [F, padded_k(K)
    / 2] each) as `w4a4_matmul_stacked` computes them on [w_gate, w_up] (w_scales and bias [2F], gate's first) and
    rounds them to out_dtype. Then F.silu(gate) * up as eager PyTorch rounds it, and the fp32 product with
    channel_scale [F] (a down projection's, applied here instead of in its activation pass) rounded to out_dtype
    -> [..., F] out_dtype. On Hopper the SwiGLU runs in the GEMM's epilogue: gate and up never go to memory."""
    op = "w4a4_matmul_swiglu"
    for name, w in (("w_gate", w_gate), ("w_up", w_up)):
        _check_int8_matrix(op, name, w)
    if w_up.shape != w_gate.shape:
        raise ValueError(f"faircalib.kernels.{op}: w_up {tuple(w_up.shape)} must match w_gate "
                         f"{tuple(w_gate.shape)} (a SwiGLU's gate and up projections have one shape)")
    f = w_gate.shape[0]
    k = _check_gemm_args(op, a_codes, a_scales, "w_gate", w_gate, 2, w_scales, bias, out_dtype, 2 * f)
    check_same_device(op, "a_codes", a_codes, "w_up", w_up)
    if channel_scale is not None:
        check_float_tensor(op, "channel_scale", channel_scale)
        check_same_device(op, "a_codes", a_codes, "channel_scale", channel_scale)
        if tuple(channel_scale.shape) != (f,):
            raise ValueError(f"faircalib.kernels.{op}: channel_scale must have shape ({f},) (one per SwiGLU "
                             f"output), got {tuple(channel_scale.shape)}")
    out = ops.w4a4_matmul_swiglu(a_codes.reshape(-1, k), a_scales.reshape(-1, 1), w_gate, w_up,
                                 w_scales.reshape(-1), bias, channel_scale, out_dtype)
    return out.reshape(*a_codes.shape[:-1], f)


def int8_matmul(a_codes: torch.Tensor, a_scales: torch.Tensor, w_int8: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """`w4a4_matmul` with the weight already unpacked: w_int8 int8 [N, padded_k(K)] from `unpack_weight_int8` (codes
    in [-8, 7] for a 4-bit weight; any int8 values are summed exactly). Saves the unpack pass per call at the cost
    of 1 byte per weight kept in memory."""
    k = _check_gemm_args("int8_matmul", a_codes, a_scales, "w_int8", w_int8, 1, w_scales, bias, out_dtype)
    out = ops.int8_matmul(a_codes.reshape(-1, k), a_scales.reshape(-1, 1), w_int8, w_scales.reshape(-1), bias,
                          out_dtype)
    return out.reshape(*a_codes.shape[:-1], w_int8.shape[0])


def _check_int8_matrix(op: str, name: str, w: object) -> None:
    if not isinstance(w, torch.Tensor) or w.dtype != torch.int8:
        got = w.dtype if isinstance(w, torch.Tensor) else type(w).__name__
        raise TypeError(f"faircalib.kernels.{op}: {name} must be a torch.int8 tensor, got {got}")
    check_dims(op, name, w, 2)


def _check_width(op: str, name: str, t: torch.Tensor) -> None:
    if t.shape[-1] == 0:
        raise ValueError(f"faircalib.kernels.{op}: {name} {tuple(t.shape)} has no features (K = 0); a linear "
                         f"needs K >= 1")


def _check_gemm_args(op: str, a_codes: torch.Tensor, a_scales: torch.Tensor, w_name: str, w: torch.Tensor,
                     codes_per_byte: int, w_scales: torch.Tensor, bias: torch.Tensor | None,
                     out_dtype: torch.dtype, n: int | None = None) -> int:
    """The checks of `w4a4_matmul` (codes_per_byte 2: packed weight) and `int8_matmul` (1); returns K. `n`: the
    output width when it is not w's (stacked weights)."""
    for name, t, dtype in (("a_codes", a_codes, torch.int8), (w_name, w, torch.int8),
                           ("a_scales", a_scales, torch.float32), ("w_scales", w_scales, torch.float32)):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise TypeError(f"faircalib.kernels.{op}: {name} must be a {dtype} tensor, got {got}")
    check_min_dims(op, "a_codes", a_codes, 1)
    check_dims(op, w_name, w, 2)
    k, n = a_codes.shape[-1], w.shape[0] if n is None else n
    _check_width(op, "a_codes", a_codes)
    if w.shape[1] != padded_k(k) // codes_per_byte:
        make = f"pack_weight_for_gemm(codes [N, {k}])"
        raise ValueError(f"faircalib.kernels.{op}: {w_name} {tuple(w.shape)} does not match K={k} of a_codes "
                         f"{tuple(a_codes.shape)}: expected [N, {padded_k(k) // codes_per_byte}]; make it with "
                         f"{make if codes_per_byte == 2 else f'unpack_weight_int8({make})'}")
    if a_scales.shape != (*a_codes.shape[:-1], 1):
        raise ValueError(f"faircalib.kernels.{op}: a_scales must have shape {(*a_codes.shape[:-1], 1)}, got "
                         f"{tuple(a_scales.shape)}")
    if w_scales.numel() != n:
        raise ValueError(f"faircalib.kernels.{op}: w_scales must hold one scale per output channel ({n}), got "
                         f"shape {tuple(w_scales.shape)}; per-group weight scales are not supported, use group_size=-1")
    if bias is not None:
        check_float_tensor(op, "bias", bias)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"faircalib.kernels.{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
    if not out_dtype.is_floating_point:
        raise TypeError(f"faircalib.kernels.{op}: out_dtype must be a float dtype, got {out_dtype}")
    for name, t in (("a_scales", a_scales), (w_name, w), ("w_scales", w_scales), ("bias", bias)):
        if t is not None:
            check_same_device(op, "a_codes", a_codes, name, t)
    return k
