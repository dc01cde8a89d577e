"""`W4A4Linear`: the deployed form of a calibrated `QuantLinear` (docs/design.md, "Quantized linear").

It stores what inference needs and nothing else: 4-bit weight codes packed in the GEMM layout
(`kernels.pack_weight_for_gemm`), per-output-channel fp32 scales, the bias, the activation clip ratio and the online
input transform as Kronecker factors (`channel_scale [K]`, `left [n1, n1]`, `right [n2, n2]`, each optional; a
block Hadamard rotation is rewritten into that form). Forward: `quantize_act_packed` (transform + per-token
quantization) then `w4a4_matmul` (exact integer GEMM, fp32 scale epilogue). The kernel registry picks the PyTorch
reference on CPU and Triton on CUDA.

Agreement with the fake-quant `QuantLinear` it came from: the activation codes are computed by the same formulas
in fp32, and the integer products are exact, so outputs agree to fp32 rounding (relative ~1e-6) wherever the
codes agree. A code can differ by one where a transformed value sits on a rounding boundary and the two paths
sum the transform in another order (Hadamard rewritten as Kronecker; tf32 tensor cores on the GPU).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from faircalib import kernels
from faircalib.calib.quant_linear import QuantLinear, quantized_linears
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform, hadamard_matrix

MAX_WEIGHT_BITS = 4


def kronecker_form(transform: nn.Module | None, d: int):
    """An input transform -> (channel_scale [d] | None, left [n1, n1] | None, right [n2, n2] | None), fp32, with
    x' = leftᵀ · (X ⊙ C) · right per token (X viewed as [n1, n2]).

    A block Hadamard blockdiag(H_b, ...) with signs s equals I_{d/b} ⊗ H_{b/n2} ⊗ H_{n2} (Sylvester ordering), so
    it becomes channel_scale = s, left = I_{d/b} ⊗ H_{b/n2}, right = H_{n2}, with n2 the power of two nearest above
    √d (capped at b): factor sizes near √d keep the fused kernel's tiles small."""
    if transform is None:
        return None, None, None
    if isinstance(transform, KroneckerTransform):
        return (transform.channel_scale.detach().float(), transform.left.detach().float(),
                transform.right.detach().float())
    if isinstance(transform, HadamardTransform):
        b = transform.hadamard.shape[0]
        n2 = min(b, 1 << math.ceil(math.log2(math.isqrt(d - 1) + 1)))
        left = torch.kron(torch.eye(d // b), hadamard_matrix(b // n2))
        return transform.signs.detach().float(), left, hadamard_matrix(n2)
    raise TypeError(f"faircalib.deploy.W4A4Linear: cannot deploy input transform {type(transform).__name__}; "
                    "supported: KroneckerTransform, HadamardTransform, or none")


class W4A4Linear(nn.Module):
    """y = w4a4_matmul(quantize_act_packed(x; transform, act_clip), packed weight) + bias.

    x: [..., in_features] float -> [..., out_features] x.dtype. Buffers (the checkpoint's contents):
    `weight_packed` int8 [N, padded_k(K) / 2], `weight_scale` fp32 [N], `bias` [N] (optional), `act_clip` fp32 [],
    `channel_scale` fp32 [K], `left` fp32 [n1, n1], `right` fp32 [n2, n2] (the transform parts, each optional)."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, act_bits: int = 4,
                 left_size: int | None = None, right_size: int | None = None, channel_scale: bool = False):
        super().__init__()
        self.in_features, self.out_features, self.act_bits = in_features, out_features, act_bits
        self.register_buffer("weight_packed", torch.zeros(out_features, kernels.padded_k(in_features) // 2,
                                                          dtype=torch.int8))
        self.register_buffer("weight_scale", torch.zeros(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("act_clip", torch.ones(()))
        self.register_buffer("channel_scale", torch.ones(in_features) if channel_scale else None)
        self.register_buffer("left", torch.eye(left_size) if left_size else None)
        self.register_buffer("right", torch.eye(right_size) if right_size else None)

    @classmethod
    def from_quant_linear(cls, ql: QuantLinear) -> "W4A4Linear":
        """Pack a calibrated QuantLinear (symmetric per-channel weights of <= 4 bits, quantized activations)."""
        spec, act = ql.weight_spec, ql.act_spec
        if spec is None or act is None or not spec.symmetric or spec.group_size != -1 or spec.bits > MAX_WEIGHT_BITS:
            raise ValueError(f"faircalib.deploy.W4A4Linear: {ql.out_features}x{ql.in_features} QuantLinear with "
                             f"weight {spec} and activations {act} is not deployable; W4A4Linear needs symmetric "
                             f"per-channel weights of <= {MAX_WEIGHT_BITS} bits (group_size=-1) and quantized "
                             f"activations")
        channel_scale, left, right = kronecker_form(ql.input_transform, ql.in_features)
        module = cls(ql.in_features, ql.out_features, bias=ql.bias is not None, act_bits=act.bits,
                     left_size=None if left is None else left.shape[0],
                     right_size=None if right is None else right.shape[0], channel_scale=channel_scale is not None)
        codes, scales = ql.quantized_weight()
        with torch.no_grad():
            module.weight_packed.copy_(kernels.pack_weight_for_gemm(codes))
            module.weight_scale.copy_(scales.reshape(-1))
            if ql.bias is not None:
                module.bias.copy_(ql.bias.detach().float())
            clip = ql.act_clip_ratio()
            if clip is not None:
                module.act_clip.copy_(clip.detach().float())
            for name, value in (("channel_scale", channel_scale), ("left", left), ("right", right)):
                if value is not None:
                    getattr(module, name).copy_(value)
        return module.to(ql.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scales = kernels.quantize_act_packed(x, bits=self.act_bits, clip_ratio=self.act_clip,
                                                    channel_scale=self.channel_scale, left=self.left,
                                                    right=self.right)
        return kernels.w4a4_matmul(codes, scales, self.weight_packed, self.weight_scale, self.bias, x.dtype)

    def weight_codes(self) -> torch.Tensor:
        """The int8 weight codes [N, K] (unpacked from the GEMM layout)."""
        return kernels.unpack_weight_for_gemm(self.weight_packed, self.in_features)

    def extra_repr(self) -> str:
        parts = [name for name in ("channel_scale", "left", "right") if getattr(self, name) is not None]
        return (f"in={self.in_features}, out={self.out_features}, act_bits={self.act_bits}, "
                f"bias={self.bias is not None}, transform={'+'.join(parts) or None}")


def convert_to_w4a4(model: nn.Module) -> list[str]:
    """Replace every deployable QuantLinear in `model` by a W4A4Linear, in place. Returns the names of the
    QuantLinears left as they are (not deployable: e.g. 16-bit activations or per-group weights)."""
    kept = []
    for name, ql in list(quantized_linears(model)):
        try:
            module = W4A4Linear.from_quant_linear(ql)
        except ValueError:
            kept.append(name)
            continue
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)
    return kept
