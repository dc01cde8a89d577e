"""`torch.ops.faircalib.*`: every kernel op as a torch custom op, so torch.compile and other toolkits can use them.

Each op's implementation is the one `registry.implementation(op, device)` picks (reference or Triton); each has
a fake (meta) kernel giving output shapes and dtypes, and the differentiable ops have an autograd formula whose
backward is itself a custom op. Inputs arrive validated (the public functions in `__init__.py` check them).
Outputs are always contiguous. Empty inputs skip the kernels: the fake kernel's zero-filled result is exact
(an empty group has scale 0).

To add an op: define it with `torch.library.custom_op`, call `_dispatch` in its body, register its fake kernel
(and autograd), in the section of its kernel family.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import registry
from .quant_reference import num_groups  # importing quant_reference registers its reference implementations


def _dispatch(op: str, fake: Callable, *args):
    """Run the registry's implementation of `op` on `args` (the first is a tensor that fixes the device)."""
    if args[0].numel() == 0:
        return fake(*args)
    out = registry.implementation(op, args[0].device)(*args)
    return tuple(t.contiguous() for t in out) if isinstance(out, tuple) else out.contiguous()


def _row_scale_shape(x: Tensor) -> tuple[int, ...]:
    return (*x.shape[:-1], 1)


def _group_scale_shape(w: Tensor, group_size: int) -> tuple[int, int]:
    return w.shape[0], num_groups(w.shape[1], group_size)


# ---------------------------------------------------------------------------------------------------------
# Quantization ops (quant_reference.py, quant.py)
# ---------------------------------------------------------------------------------------------------------

def _fake_quant_act_fake(x: Tensor, clip: Tensor, bits: int) -> Tensor:
    return x.new_zeros(x.shape)


@torch.library.custom_op("faircalib::fake_quant_act", mutates_args=())
def fake_quant_act(x: Tensor, clip: Tensor, bits: int) -> Tensor:
    return _dispatch("fake_quant_act", _fake_quant_act_fake, x, clip, bits)


def _fake_quant_act_backward_fake(grad_y: Tensor, x: Tensor, clip: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    return x.new_zeros(x.shape), x.new_zeros(_row_scale_shape(x), dtype=torch.float32)


@torch.library.custom_op("faircalib::fake_quant_act_backward", mutates_args=())
def fake_quant_act_backward(grad_y: Tensor, x: Tensor, clip: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """-> (grad_x, grad_clip per row [..., 1] fp32)."""
    return _dispatch("fake_quant_act_backward", _fake_quant_act_backward_fake, grad_y, x, clip, bits)


def _fake_quant_weight_fake(w: Tensor, clip_max: Tensor, clip_min: Tensor, bits: int, group_size: int,
                            symmetric: bool) -> Tensor:
    return w.new_zeros(w.shape)


@torch.library.custom_op("faircalib::fake_quant_weight", mutates_args=())
def fake_quant_weight(w: Tensor, clip_max: Tensor, clip_min: Tensor, bits: int, group_size: int,
                      symmetric: bool) -> Tensor:
    return _dispatch("fake_quant_weight", _fake_quant_weight_fake, w, clip_max, clip_min, bits, group_size, symmetric)


def _fake_quant_weight_backward_fake(grad_y: Tensor, w: Tensor, clip_max: Tensor, clip_min: Tensor, bits: int,
                                     group_size: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    shape = _group_scale_shape(w, group_size)
    return w.new_zeros(w.shape), w.new_zeros(shape, dtype=torch.float32), w.new_zeros(shape, dtype=torch.float32)


@torch.library.custom_op("faircalib::fake_quant_weight_backward", mutates_args=())
def fake_quant_weight_backward(grad_y: Tensor, w: Tensor, clip_max: Tensor, clip_min: Tensor, bits: int,
                               group_size: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> (grad_w, grad_clip_max [N, G] fp32, grad_clip_min [N, G] fp32), per group."""
    return _dispatch("fake_quant_weight_backward", _fake_quant_weight_backward_fake,
                     grad_y, w, clip_max, clip_min, bits, group_size, symmetric)


def _quantize_act_fake(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    return x.new_zeros(x.shape, dtype=torch.int8), x.new_zeros(_row_scale_shape(x), dtype=torch.float32)


@torch.library.custom_op("faircalib::quantize_act", mutates_args=())
def quantize_act(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    return _dispatch("quantize_act", _quantize_act_fake, x, bits)


def _quantize_weight_fake(w: Tensor, bits: int, group_size: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    shape = _group_scale_shape(w, group_size)
    return (w.new_zeros(w.shape, dtype=torch.int8), w.new_zeros(shape, dtype=torch.float32),
            w.new_zeros(shape, dtype=torch.int8))


@torch.library.custom_op("faircalib::quantize_weight", mutates_args=())
def quantize_weight(w: Tensor, bits: int, group_size: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> (codes int8 [N, K], scales fp32 [N, G], zeros int8 [N, G]); zeros are 0 when symmetric."""
    return _dispatch("quantize_weight", _quantize_weight_fake, w, bits, group_size, symmetric)


def _pack_int4_fake(codes: Tensor) -> Tensor:
    return codes.new_zeros((*codes.shape[:-1], (codes.shape[-1] + 1) // 2), dtype=torch.uint8)


@torch.library.custom_op("faircalib::pack_int4", mutates_args=())
def pack_int4(codes: Tensor) -> Tensor:
    return _dispatch("pack_int4", _pack_int4_fake, codes)


def _unpack_int4_fake(packed: Tensor, k: int) -> Tensor:
    return packed.new_zeros((*packed.shape[:-1], k), dtype=torch.int8)


@torch.library.custom_op("faircalib::unpack_int4", mutates_args=())
def unpack_int4(packed: Tensor, k: int) -> Tensor:
    return _dispatch("unpack_int4", _unpack_int4_fake, packed, k)


for _op, _fake in ((fake_quant_act, _fake_quant_act_fake),
                   (fake_quant_act_backward, _fake_quant_act_backward_fake),
                   (fake_quant_weight, _fake_quant_weight_fake),
                   (fake_quant_weight_backward, _fake_quant_weight_backward_fake),
                   (quantize_act, _quantize_act_fake),
                   (quantize_weight, _quantize_weight_fake),
                   (pack_int4, _pack_int4_fake),
                   (unpack_int4, _unpack_int4_fake)):
    _op.register_fake(_fake)


def _reduce_to(grad: Tensor, like: Tensor, needed: bool) -> Tensor | None:
    """A per-group clip gradient summed (deterministically) to the shape and dtype of the clip it belongs to."""
    return grad.sum_to_size(like.shape).to(like.dtype) if needed else None


def _fake_quant_act_setup(ctx, inputs, output) -> None:
    x, clip, ctx.bits = inputs
    ctx.save_for_backward(x, clip)


def _fake_quant_act_grad(ctx, grad_y: Tensor):
    x, clip = ctx.saved_tensors
    grad_x, grad_clip = fake_quant_act_backward(grad_y, x, clip, ctx.bits)
    return grad_x, _reduce_to(grad_clip, clip, ctx.needs_input_grad[1]), None


fake_quant_act.register_autograd(_fake_quant_act_grad, setup_context=_fake_quant_act_setup)


def _fake_quant_weight_setup(ctx, inputs, output) -> None:
    w, clip_max, clip_min, ctx.bits, ctx.group_size, ctx.symmetric = inputs
    ctx.save_for_backward(w, clip_max, clip_min)


def _fake_quant_weight_grad(ctx, grad_y: Tensor):
    w, clip_max, clip_min = ctx.saved_tensors
    grad_w, grad_max, grad_min = fake_quant_weight_backward(
        grad_y, w, clip_max, clip_min, ctx.bits, ctx.group_size, ctx.symmetric)
    return (grad_w, _reduce_to(grad_max, clip_max, ctx.needs_input_grad[1]),
            _reduce_to(grad_min, clip_min, ctx.needs_input_grad[2]), None, None, None)


fake_quant_weight.register_autograd(_fake_quant_weight_grad, setup_context=_fake_quant_weight_setup)

# ---------------------------------------------------------------------------------------------------------
# Calibration-loss ops (loss_reference.py, loss.py)
# ---------------------------------------------------------------------------------------------------------
from . import loss_reference  # noqa: E402,F401  (registers the reference implementations)


def _weighted_mse_fake(a: Tensor, b: Tensor, weights: Tensor, reduction: str) -> Tensor:
    return a.new_zeros(() if reduction == "sum" else a.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("faircalib::weighted_mse", mutates_args=())
def weighted_mse(a: Tensor, b: Tensor, weights: Tensor, reduction: str) -> Tensor:
    """-> fp32 [] ("sum") or [*rows] ("none")."""
    return _dispatch("weighted_mse", _weighted_mse_fake, a, b, weights, reduction)


def _weighted_mse_backward_fake(grad: Tensor, a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    return a.new_zeros(a.shape)


@torch.library.custom_op("faircalib::weighted_mse_backward", mutates_args=())
def weighted_mse_backward(grad: Tensor, a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """-> dL/da [*rows, D] a.dtype; dL/db is this op with a and b swapped."""
    return _dispatch("weighted_mse_backward", _weighted_mse_backward_fake, grad, a, b, weights)


def _clip_search_fake(x: Tensor, ratios: Tensor, bits: int, weights: Tensor, group_size: int, reduce: str) -> Tensor:
    n_candidates = ratios.shape[0]
    shape = (n_candidates,) if reduce == "sum" else (*x.shape[:-1], num_groups(x.shape[-1], group_size), n_candidates)
    return x.new_zeros(shape, dtype=torch.float32)


@torch.library.custom_op("faircalib::clip_search", mutates_args=())
def clip_search(x: Tensor, ratios: Tensor, bits: int, weights: Tensor, group_size: int, reduce: str) -> Tensor:
    """-> fp32 [C] ("sum") or [*rows, G, C] ("none")."""
    return _dispatch("clip_search", _clip_search_fake, x, ratios, bits, weights, group_size, reduce)


for _op, _fake in ((weighted_mse, _weighted_mse_fake),
                   (weighted_mse_backward, _weighted_mse_backward_fake),
                   (clip_search, _clip_search_fake)):
    _op.register_fake(_fake)


def _weighted_mse_setup(ctx, inputs, output) -> None:
    a, b, weights, _ = inputs
    ctx.save_for_backward(a, b, weights)


def _weighted_mse_grad(ctx, grad: Tensor):
    """dL/da = 2 w g (a - b), dL/db = -dL/da; the weights (a fixed prior) get no gradient."""
    a, b, weights = ctx.saved_tensors
    need_a, need_b = ctx.needs_input_grad[:2]
    grad_a = weighted_mse_backward(grad, a, b, weights) if need_a else None
    if not need_b:
        return grad_a, None, None, None
    grad_b = grad_a.neg().to(b.dtype) if need_a else weighted_mse_backward(grad, b, a, weights)
    return grad_a, grad_b, None, None


weighted_mse.register_autograd(_weighted_mse_grad, setup_context=_weighted_mse_setup)


# ---------------------------------------------------------------------------------------------------------
# W4A4 deployment ops (gemm_reference.py, gemm.py)
# ---------------------------------------------------------------------------------------------------------
from . import gemm_reference  # noqa: E402  (registers the reference implementations)


def _quantize_act_packed_fake(x: Tensor, channel_scale: Tensor | None, left: Tensor | None, right: Tensor | None,
                              clip: Tensor | None, bits: int) -> tuple[Tensor, Tensor]:
    return x.new_zeros(x.shape, dtype=torch.int8), x.new_zeros(_row_scale_shape(x), dtype=torch.float32)


@torch.library.custom_op("faircalib::quantize_act_packed", mutates_args=())
def quantize_act_packed(x: Tensor, channel_scale: Tensor | None, left: Tensor | None, right: Tensor | None,
                        clip: Tensor | None, bits: int) -> tuple[Tensor, Tensor]:
    """x [M, K] -> (codes int8 [M, K], scales fp32 [M, 1]) of the transformed x."""
    return _dispatch("quantize_act_packed", _quantize_act_packed_fake, x, channel_scale, left, right, clip, bits)


@torch.library.custom_op("faircalib::quantize_swiglu_packed", mutates_args=())
def quantize_swiglu_packed(gate: Tensor, up: Tensor, channel_scale: Tensor | None, left: Tensor | None,
                           right: Tensor | None, clip: Tensor | None, bits: int) -> tuple[Tensor, Tensor]:
    """gate, up [M, K] -> (codes int8 [M, K], scales fp32 [M, 1]) of the transformed silu(gate) · up."""
    return _dispatch("quantize_swiglu_packed", _quantize_swiglu_packed_fake, gate, up, channel_scale, left, right,
                     clip, bits)


def _quantize_swiglu_packed_fake(gate: Tensor, up: Tensor, channel_scale: Tensor | None, left: Tensor | None,
                                 right: Tensor | None, clip: Tensor | None, bits: int) -> tuple[Tensor, Tensor]:
    return _quantize_act_packed_fake(up, channel_scale, left, right, clip, bits)


def _gemm_fake(a_codes: Tensor, a_scales: Tensor, w: Tensor, w_scales: Tensor, bias: Tensor | None,
               out_dtype: torch.dtype) -> Tensor:
    """Fake of `w4a4_matmul` and `int8_matmul` (packed or unpacked weight [N, ...]): [M, N] out_dtype."""
    return a_codes.new_zeros((a_codes.shape[0], w.shape[0]), dtype=out_dtype)


@torch.library.custom_op("faircalib::w4a4_matmul", mutates_args=())
def w4a4_matmul(a_codes: Tensor, a_scales: Tensor, w_packed: Tensor, w_scales: Tensor, bias: Tensor | None,
                out_dtype: torch.dtype) -> Tensor:
    """a_codes int8 [M, K] x w_packed int8 [N, padded_k(K) / 2] (GEMM layout) -> [M, N] out_dtype."""
    return _dispatch("w4a4_matmul", _gemm_fake, a_codes, a_scales, w_packed, w_scales, bias, out_dtype)


def _unpack_weight_int8_fake(w_packed: Tensor) -> Tensor:
    return w_packed.new_zeros((w_packed.shape[0], 2 * w_packed.shape[1]))


@torch.library.custom_op("faircalib::unpack_weight_int8", mutates_args=())
def unpack_weight_int8(w_packed: Tensor) -> Tensor:
    """w_packed int8 [N, Kp / 2] (GEMM layout) -> int8 [N, Kp] codes in natural order."""
    return _dispatch("unpack_weight_int8", _unpack_weight_int8_fake, w_packed)


def _w4a4_matmul_stacked_fake(a_codes: Tensor, a_scales: Tensor, w_packed: list[Tensor], w_scales: Tensor,
                              bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    return a_codes.new_zeros((a_codes.shape[0], sum(w.shape[0] for w in w_packed)), dtype=out_dtype)


@torch.library.custom_op("faircalib::w4a4_matmul_stacked", mutates_args=())
def w4a4_matmul_stacked(a_codes: Tensor, a_scales: Tensor, w_packed: list[Tensor], w_scales: Tensor,
                        bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """a_codes int8 [M, K] x the weights w_packed[i] [N_i, padded_k(K) / 2] stacked along N -> [M, sum N_i]."""
    return _dispatch("w4a4_matmul_stacked", _w4a4_matmul_stacked_fake, a_codes, a_scales, w_packed, w_scales, bias,
                     out_dtype)


def _w4a4_matmul_swiglu_fake(a_codes: Tensor, a_scales: Tensor, w_gate: Tensor, w_up: Tensor, w_scales: Tensor,
                             bias: Tensor | None, channel_scale: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    return a_codes.new_zeros((a_codes.shape[0], w_gate.shape[0]), dtype=out_dtype)


@torch.library.custom_op("faircalib::w4a4_matmul_swiglu", mutates_args=())
def w4a4_matmul_swiglu(a_codes: Tensor, a_scales: Tensor, w_gate: Tensor, w_up: Tensor, w_scales: Tensor,
                       bias: Tensor | None, channel_scale: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """a_codes int8 [M, K] -> silu(gate) · up (· channel_scale) [M, F] of the packed gate and up weights [F, ...]."""
    return _dispatch("w4a4_matmul_swiglu", _w4a4_matmul_swiglu_fake, a_codes, a_scales, w_gate, w_up, w_scales,
                     bias, channel_scale, out_dtype)


@torch.library.custom_op("faircalib::int8_matmul", mutates_args=())
def int8_matmul(a_codes: Tensor, a_scales: Tensor, w_int8: Tensor, w_scales: Tensor, bias: Tensor | None,
                out_dtype: torch.dtype) -> Tensor:
    """a_codes int8 [M, K] x w_int8 int8 [N, padded_k(K)] (unpacked weight) -> [M, N] out_dtype."""
    return _dispatch("int8_matmul", _gemm_fake, a_codes, a_scales, w_int8, w_scales, bias, out_dtype)


quantize_act_packed.register_fake(_quantize_act_packed_fake)
quantize_swiglu_packed.register_fake(_quantize_swiglu_packed_fake)
w4a4_matmul.register_fake(_gemm_fake)
unpack_weight_int8.register_fake(_unpack_weight_int8_fake)
w4a4_matmul_stacked.register_fake(_w4a4_matmul_stacked_fake)
w4a4_matmul_swiglu.register_fake(_w4a4_matmul_swiglu_fake)
int8_matmul.register_fake(_gemm_fake)
