"""`W4A4Linear`: the deployed form of a calibrated `QuantLinear` (docs/design.md, "Quantized linear").

It stores what inference needs and nothing else: 4-bit weight codes packed in the GEMM layout
(`kernels.pack_weight_for_gemm`), per-output-channel fp32 scales, the bias, the activation clip ratio and the online
input transform as Kronecker factors (`channel_scale [K]`, `left [n1, n1]`, `right [n2, n2]`, each optional; a
block Hadamard rotation is rewritten into that form). Forward: `quantize_act_packed` (transform + per-token
quantization) then `w4a4_matmul` (exact integer GEMM, fp32 scale epilogue). The kernel registry picks the PyTorch
reference on CPU and Triton on CUDA. With `fuse_swiglu = True` a down projection is called as
`forward_swiglu(gate, up)` by the models (`layers.swiglu_down`): its activation kernel computes silu(gate)·up itself,
so the product never goes to memory. Off by default: on H100 it was correct but not faster than Inductor's own fused
silu·up in compiled blocks (docs/design.md).

Agreement with the fake-quant `QuantLinear` it came from: the activation codes are computed by the same formulas
in fp32, and the integer products are exact, so outputs agree to fp32 rounding (relative ~1e-6) wherever the
codes agree. A code can differ by one where a transformed value sits on a rounding boundary and the two paths
sum the transform in another order (Hadamard rewritten as Kronecker; tf32 tensor cores on the GPU).

The linears that read one input (q/k/v, gate/up) are linked so that it is transformed and quantized once and
multiplied in one GEMM: `shared_input.py`; gate/up's GEMM also forms the SwiGLU, with the down projection's channel
scale where that can be folded in, and the down projection then takes `forward_scaled`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from faircalib import kernels
from faircalib.kernels import registry
from faircalib.calib.quant_linear import QuantLinear, quantized_linears
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform, hadamard_matrix

if TYPE_CHECKING:
    from faircalib.deploy.shared_input import SharedInputQuantization

MAX_WEIGHT_BITS = 4


def deploy_refusal(weight_spec, act_spec) -> str | None:
    """Why a QuantLinear with these specs (`config.QuantSpec` or None) cannot become a W4A4Linear, or None if it
    can: W4A4Linear needs symmetric per-channel weights of <= MAX_WEIGHT_BITS bits and quantized activations."""
    if act_spec is None:
        return "16-bit activations"
    if weight_spec is None:
        return "16-bit weights"
    if not weight_spec.symmetric:
        return "asymmetric weights"
    if weight_spec.group_size != -1:
        return f"per-group weights (group_size {weight_spec.group_size})"
    if weight_spec.bits > MAX_WEIGHT_BITS:
        return f"{weight_spec.bits}-bit weights (at most {MAX_WEIGHT_BITS})"
    return None


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
        # The weight also as int8 codes [N, padded_k(K)] (`keep_weight_unpacked`); never part of a checkpoint.
        self.register_buffer("weight_int8", None, persistent=False)
        self._unpacked_from: tuple | None = None  # (weight_packed, its _version) that weight_int8 was unpacked from
        self.shared_input: SharedInputQuantization | None = None  # set by share_input_quantization
        self._checked_buffers: tuple | None = None  # the buffers the public ops accepted (`_fast_path`)
        self.fuse_swiglu = False  # `layers.swiglu_down` calls `forward_swiglu` when set (module doc)

    @classmethod
    def from_quant_linear(cls, ql: QuantLinear) -> "W4A4Linear":
        """Pack a calibrated QuantLinear (symmetric per-channel weights of <= 4 bits, quantized activations)."""
        spec, act = ql.weight_spec, ql.act_spec
        refusal = deploy_refusal(spec, act)
        if refusal is not None:
            raise ValueError(f"faircalib.deploy.W4A4Linear: {ql.out_features}x{ql.in_features} QuantLinear with "
                             f"weight {spec} and activations {act} is not deployable ({refusal}); W4A4Linear needs "
                             f"symmetric per-channel weights of <= {MAX_WEIGHT_BITS} bits (group_size=-1) and "
                             f"quantized activations")
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

    def keep_weight_unpacked(self, keep: bool = True, drop_packed: bool = False) -> None:
        """Keep the weight also as int8 codes (`weight_int8`, a non-persistent buffer: checkpoints are unchanged), so
        that each forward runs the INT8 GEMM directly instead of first unpacking the 4-bit weight. Memory for time:
        the weight then takes 1.5 bytes per element (0.75x of bf16 instead of 0.25x); the unpack pass it saves was
        3.5 ms of a 22 ms LLaDA-8B step over 1024 tokens on H100 (BENCHMARKS.md); on Hopper the packed weight is now
        unpacked in registers inside the GEMM where that is faster (`kernels/gemm_regs.py`), which made this gain
        small there. keep=False frees the copy. Eager calls unpack again if `weight_packed` was replaced or modified
        in place; compiled code does not check.
        drop_packed: keep the int8 codes alone (1 byte per element, 0.5x of bf16): `weight_packed` becomes an empty
        [N, 0] tensor (`packed_dropped`), the state dict (checkpoints) and `weight_codes` are computed from the int8
        codes, loading a state dict unpacks the loaded weight and drops it again, and keep=False packs it back."""
        with torch.no_grad():
            if not keep:
                if self.packed_dropped:
                    self.weight_packed = self._packed_from_int8()
                self.weight_int8, self._unpacked_from = None, None
                return
            if not self.packed_dropped:
                self.weight_int8 = kernels.unpack_weight_int8(self.weight_packed)
                self._unpacked_from = (self.weight_packed, self.weight_packed._version)
            if drop_packed:
                self.weight_packed = self.weight_packed.new_empty((self.out_features, 0))
                self._unpacked_from = None

    @property
    def packed_dropped(self) -> bool:
        """Whether only the int8 codes hold the weight (`keep_weight_unpacked(drop_packed=True)`)."""
        return self.weight_packed.shape[1] == 0

    def _packed_from_int8(self) -> torch.Tensor:
        return kernels.pack_weight_for_gemm(self.weight_int8[:, :self.in_features])

    def _unpacked_weight(self) -> torch.Tensor | None:
        """weight_int8, unpacked again first (eager only) if the packed weight changed since."""
        if self.weight_int8 is not None and self._unpacked_from is not None and not torch.compiler.is_compiling():
            source, version = self._unpacked_from
            if source is not self.weight_packed or version != source._version:
                self.keep_weight_unpacked()
        return self.weight_int8

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.packed_dropped:  # checkpoints keep the packed layout
            destination[prefix + "weight_packed"] = self._packed_from_int8()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        dropped = self.packed_dropped and prefix + "weight_packed" in state_dict
        if dropped:  # a buffer of the stored shape to load into, then the loaded weight unpacked and dropped again
            self.weight_packed = torch.zeros(self.out_features, kernels.padded_k(self.in_features) // 2,
                                             dtype=torch.int8, device=self.weight_packed.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if dropped:
            self.keep_weight_unpacked(drop_packed=True)

    def _kernel_buffers(self) -> tuple:
        return (self.weight_packed, self.weight_scale, self.bias, self.act_clip, self.channel_scale, self.left,
                self.right, self.weight_int8)

    def _fast_path(self, x: torch.Tensor) -> bool:
        """Whether this eager call may skip the public ops' checks and the custom-op dispatcher (on an H100 they
        cost ~115 of the ~300 us of host time per linear; at 4096 tokens the GPU work is ~250 us): yes once the
        public ops have accepted these very buffer tensors (a `.to()` or `load_state_dict` that replaces one
        re-validates) and x is not empty (the ops skip the kernels then) and has the right width, a float dtype and
        the buffers' device. Traced code (torch.compile) always takes the custom ops."""
        checked = self._checked_buffers
        return (checked is not None and not torch.compiler.is_compiling() and x.dtype.is_floating_point and
                x.dim() >= 1 and x.numel() > 0 and x.shape[-1] == self.in_features and
                x.device == self.weight_packed.device and all(a is b for a, b in zip(checked, self._kernel_buffers())))

    def quantize_input(self, x: torch.Tensor, fast: bool | None = None,
                       scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 [..., K], scales fp32 [..., 1]) of this linear's transformed input, always computed.
        `fast`: `_fast_path(x)` when the caller already knows it. `scaled`: x already carries the channel scale
        (`forward_scaled`)."""
        channel_scale = None if scaled else self.channel_scale
        if self._fast_path(x) if fast is None else fast:
            impl = registry.implementation("quantize_act_packed", x.device)
            codes, scales = impl(x.reshape(-1, self.in_features), channel_scale, self.left, self.right,
                                 self.act_clip, self.act_bits)
            return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
        self._check_width(x)
        return kernels.quantize_act_packed(x, bits=self.act_bits, clip_ratio=self.act_clip,
                                           channel_scale=channel_scale, left=self.left, right=self.right)

    def _check_width(self, x: torch.Tensor) -> None:
        """The slow path's first check: an input of the wrong width is named here, as this linear's, rather than
        by a kernel in terms of transform factors or GEMM operands."""
        if x.dim() >= 1 and x.shape[-1] != self.in_features:
            raise ValueError(f"faircalib.deploy.W4A4Linear({self.in_features} -> {self.out_features}): the input of "
                             f"shape {tuple(x.shape)} has {x.shape[-1]} features; this linear takes "
                             f"{self.in_features}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_input is not None:
            return self.shared_input.forward(self, x)
        fast = self._fast_path(x)
        return self._matmul(*self.quantize_input(x, fast), x, fast)

    def forward_swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """self(F.silu(gate) * up), with the SwiGLU computed inside the activation kernel instead of written to
        memory and read back (the models call this for their down projection: `layers.swiglu_down`). Module hooks
        do not fire for this entry point."""
        fast = self._fast_path(up)
        if fast and gate.shape == up.shape and gate.dtype == up.dtype and gate.device == up.device:
            impl = registry.implementation("quantize_swiglu_packed", up.device)
            codes, scales = impl(gate.reshape(-1, self.in_features), up.reshape(-1, self.in_features),
                                 self.channel_scale, self.left, self.right, self.act_clip, self.act_bits)
            codes, scales = codes.reshape(up.shape), scales.reshape(*up.shape[:-1], 1)
        else:
            self._check_width(up)
            codes, scales = kernels.quantize_act_packed(up, bits=self.act_bits, clip_ratio=self.act_clip,
                                                        channel_scale=self.channel_scale, left=self.left,
                                                        right=self.right, gate=gate)
        return self._matmul(codes, scales, up, fast)

    def forward_scaled(self, h: torch.Tensor) -> torch.Tensor:
        """self(x) given h = x ⊙ channel_scale, the product already formed and rounded to x's dtype by whoever made
        x (the SwiGLU epilogue of the gate/up GEMM: `SharedInputQuantization.swiglu`), so the activation pass
        skips the channel scale. Module hooks do not fire for this entry point."""
        fast = self._fast_path(h)
        return self._matmul(*self.quantize_input(h, fast, scaled=True), h, fast)

    def _matmul(self, codes: torch.Tensor, scales: torch.Tensor, x: torch.Tensor, fast: bool) -> torch.Tensor:
        unpacked = self._unpacked_weight()
        weight = self.weight_packed if unpacked is None else unpacked
        if fast:
            impl = registry.implementation("w4a4_matmul" if unpacked is None else "int8_matmul", x.device)
            out = impl(codes.reshape(-1, self.in_features), scales.reshape(-1, 1), weight, self.weight_scale,
                       self.bias, x.dtype)
            return out.reshape(*x.shape[:-1], self.out_features)
        matmul = kernels.w4a4_matmul if unpacked is None else kernels.int8_matmul
        out = matmul(codes, scales, weight, self.weight_scale, self.bias, x.dtype)
        if not torch.compiler.is_compiling():
            self._checked_buffers = self._kernel_buffers()  # both public ops accepted them
        return out

    def weight_codes(self) -> torch.Tensor:
        """The int8 weight codes [N, K] (unpacked from the GEMM layout)."""
        if self.packed_dropped:
            return self.weight_int8[:, :self.in_features].clone()
        return kernels.unpack_weight_for_gemm(self.weight_packed, self.in_features)

    def extra_repr(self) -> str:
        parts = [name for name in ("channel_scale", "left", "right") if getattr(self, name) is not None]
        shared = "" if self.shared_input is None else f", shared_input={len(self.shared_input.members)}"
        weight = "" if self.weight_int8 is None else (", weight=int8 only" if self.packed_dropped else
                                                      ", weight=packed+int8")
        return (f"in={self.in_features}, out={self.out_features}, act_bits={self.act_bits}, "
                f"bias={self.bias is not None}, transform={'+'.join(parts) or None}{shared}{weight}")


def keep_weights_unpacked(model: nn.Module, keep: bool = True, drop_packed: bool = False) -> int:
    """`W4A4Linear.keep_weight_unpacked(keep, drop_packed)` on every W4A4Linear of `model` (memory for time: see
    there), the copies of linked linears stacked so that each group still runs one GEMM (`stack_kept_weights`);
    returns how many linears there are."""
    linears = [m for m in model.modules() if isinstance(m, W4A4Linear)]
    for linear in linears:
        linear.keep_weight_unpacked(keep, drop_packed)
    for group in {id(m.shared_input): m.shared_input for m in linears if m.shared_input is not None}.values():
        group.stack_kept_weights()
    return len(linears)


def convert_to_w4a4(model: nn.Module) -> list[str]:
    """Replace every deployable QuantLinear in `model` by a W4A4Linear, in place, and link the linears of each
    input group (`share_model_input_quantization`). Returns the names of the QuantLinears left as they are (not
    deployable: e.g. 16-bit activations or per-group weights)."""
    from faircalib.deploy.shared_input import share_model_input_quantization  # it imports this module

    kept = []
    for name, ql in list(quantized_linears(model)):
        try:
            module = W4A4Linear.from_quant_linear(ql)
        except ValueError:
            kept.append(name)
            continue
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)
    share_model_input_quantization(model)
    return kept
