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

One quantization per input (FlatQuant's layout): the W4A4Linears that read the same input (q/k/v, gate/up) are
linked by `share_input_quantization`, which checks that their transform buffers and activation clips are bitwise
equal; the first of them to see an input runs `quantize_act_packed`, the others reuse its codes and scales
(`InputMemo`: same tensor object, unmodified). Every linear keeps its own buffers (the checkpoint format is
unchanged); a member whose buffers change after linking has them checked against the others again at its next
forward (a mismatch then raises). `convert_to_w4a4`, `load_quantized` and the transformers quantizer link every
block's input groups (`share_model_input_quantization`). Under torch.compile the members hand the result on within
the traced forward instead (`SharedInputQuantization._hand`), so compiled blocks quantize each input once too, in one
graph without breaks.

One GEMM per input group (`SharedInputQuantization.fused_gemm`, on by default): the first member to see an input
also runs one GEMM against the members' weights stacked along N (`w4a4_matmul_stacked`); each member returns its
column slice, bitwise equal to its own GEMM's output. A wider GEMM fills the GPU better (H100: Dream-7B's 512-wide
k/v inside a 4608-wide q/k/v GEMM; BENCHMARKS.md). The packed weights stay per member; the stack exists only as the
GEMM's int8 operand. Not taken where the memo is not (inference tensors) or where weights are kept unpacked
(stacking those copies would cost a copy per call): then one GEMM per member.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

from faircalib import kernels
from faircalib.kernels import registry
from faircalib.calib.input_memo import InputMemo
from faircalib.calib.quant_linear import QuantLinear, quantized_linears
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform, hadamard_matrix

MAX_WEIGHT_BITS = 4
# What decides a W4A4Linear's activation codes besides x: equal in every member of a shared input quantization.
ACT_BUFFERS = ("act_clip", "channel_scale", "left", "right")


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

    def keep_weight_unpacked(self, keep: bool = True) -> None:
        """Keep the weight also as int8 codes (`weight_int8`, a non-persistent buffer: checkpoints are unchanged), so
        that each forward runs the INT8 GEMM directly instead of first unpacking the 4-bit weight. Memory for time:
        the weight then takes 1.5 bytes per element (0.75x of bf16 instead of 0.25x); the unpack pass it saves was
        3.5 ms of a 22 ms LLaDA-8B step over 1024 tokens on H100 (BENCHMARKS.md). keep=False frees the copy. Eager
        calls unpack again if `weight_packed` was replaced or modified in place; compiled code does not check."""
        if keep:
            with torch.no_grad():
                self.weight_int8 = kernels.unpack_weight_int8(self.weight_packed)
            self._unpacked_from = (self.weight_packed, self.weight_packed._version)
        else:
            self.weight_int8, self._unpacked_from = None, None

    def _unpacked_weight(self) -> torch.Tensor | None:
        """weight_int8, unpacked again first (eager only) if the packed weight changed since."""
        if self.weight_int8 is not None and not torch.compiler.is_compiling():
            source, version = self._unpacked_from
            if source is not self.weight_packed or version != source._version:
                self.keep_weight_unpacked()
        return self.weight_int8

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

    def quantize_input(self, x: torch.Tensor, fast: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 [..., K], scales fp32 [..., 1]) of this linear's transformed input, always computed.
        `fast`: `_fast_path(x)` when the caller already knows it."""
        if self._fast_path(x) if fast is None else fast:
            impl = registry.implementation("quantize_act_packed", x.device)
            codes, scales = impl(x.reshape(-1, self.in_features), self.channel_scale, self.left, self.right,
                                 self.act_clip, self.act_bits)
            return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], 1)
        return kernels.quantize_act_packed(x, bits=self.act_bits, clip_ratio=self.act_clip,
                                           channel_scale=self.channel_scale, left=self.left, right=self.right)

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
            codes, scales = kernels.quantize_act_packed(up, bits=self.act_bits, clip_ratio=self.act_clip,
                                                        channel_scale=self.channel_scale, left=self.left,
                                                        right=self.right, gate=gate)
        return self._matmul(codes, scales, up, fast)

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
        return kernels.unpack_weight_for_gemm(self.weight_packed, self.in_features)

    def extra_repr(self) -> str:
        parts = [name for name in ("channel_scale", "left", "right") if getattr(self, name) is not None]
        shared = "" if self.shared_input is None else f", shared_input={len(self.shared_input.members)}"
        return (f"in={self.in_features}, out={self.out_features}, act_bits={self.act_bits}, "
                f"bias={self.bias is not None}, transform={'+'.join(parts) or None}{shared}")


def _act_state(module: W4A4Linear) -> tuple:
    """What the member check remembers: act_bits and each activation buffer as (tensor, _version) (None if absent)."""
    return (module.act_bits, *((None if t is None else (t, t._version))
                               for t in (getattr(module, name) for name in ACT_BUFFERS)))


def _same_state(a: tuple | None, b: tuple) -> bool:
    return a is not None and a[0] == b[0] and all(
        u is v or (u is not None and v is not None and u[0] is v[0] and u[1] == v[1]) for u, v in zip(a[1:], b[1:]))


def _mismatches(modules: Sequence[W4A4Linear]) -> list[str]:
    """What differs between modules[0] and the others in what decides the activation codes (empty: bitwise equal)."""
    first, problems = modules[0], []
    for i, other in enumerate(modules[1:], start=1):
        for name in ("in_features", "act_bits"):
            if getattr(other, name) != getattr(first, name):
                problems.append(f"{name} of member {i} ({getattr(other, name)}) != member 0 ({getattr(first, name)})")
        for name in ACT_BUFFERS:
            a, b = getattr(first, name), getattr(other, name)
            if a is None or b is None:
                if (a is None) != (b is None):
                    problems.append(f"{name}: member {i} {'has' if b is not None else 'lacks'} it, member 0 "
                                    f"{'has' if a is not None else 'lacks'} it")
                continue
            same = (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device and
                    torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
            if not same:
                shown = f" ({b.item():.6g} vs {a.item():.6g})" if a.numel() == 1 and b.numel() == 1 else ""
                problems.append(f"{name} of member {i} differs from member 0{shown}")
    return problems


class SharedInputQuantization:
    """The W4A4Linears of one input: the first to see an input quantizes it and runs one GEMM for all of them
    (`fused_gemm`; else each runs its own on the shared codes), the others take their column slices.

    Built by `share_input_quantization`. Each member's activation buffers were found bitwise equal to the
    others'; a member whose buffers have changed since (in place, or replaced by `.to()` / `load_state_dict`) has
    the whole group checked again at its next forward, and a mismatch raises. So a reused result always equals
    what the reading member would compute itself."""

    def __init__(self, members: Sequence[W4A4Linear]):
        self.members = list(members)
        self.memo = InputMemo()
        self.slots = [self.memo.join() for _ in self.members]
        self.generation = 0  # bumped by every successful check: results of an older one are not reused
        self._states: list[tuple | None] = [None] * len(self.members)
        self._remember()
        self._handed: tuple | None = None  # (x, result) within one traced forward (`_hand`)
        self.fused_gemm = True  # one GEMM for all members (module doc); False: one per member

    def check(self) -> None:
        """Raise ValueError unless every member's activation buffers are bitwise equal; remember them."""
        problems = _mismatches(self.members)
        if problems:
            raise ValueError("faircalib.deploy: W4A4Linears that share one input quantization no longer agree: "
                             f"{'; '.join(problems)}. Give every member the same act_clip and transform, or unlink "
                             "a module with share_input_quantization([module])")
        self._remember()

    def _remember(self) -> None:
        """Record the members' (found equal) activation buffers; results computed before are not reused."""
        self._states = [_act_state(m) for m in self.members]
        self.generation += 1

    def forward(self, module: W4A4Linear, x: torch.Tensor) -> torch.Tensor:
        """module(x) for a member: its column slice of the group's one GEMM (`fused_gemm`), else its own GEMM on
        the codes the first member computed."""
        if torch.compiler.is_compiling():
            if self._gemm_fusable():
                return self._member_slice(module, self._hand(module, x, lambda: self._fused_matmul(x)))
            return module._matmul(*self._hand(module, x, lambda: module.quantize_input(x)), x, False)
        i = self._index(module)
        if not _same_state(self._states[i], _act_state(module)):
            self.check()
        weights = tuple(t for m in self.members for t in (m.weight_packed, m.weight_scale, m.bias))
        key = (self.generation, *weights)
        if self._gemm_fusable() and self.memo.memoizes(x, key):
            return self._member_slice(module, self.memo.get(self.slots[i], x, key, lambda: self._fused_matmul(x)))
        fast = module._fast_path(x)
        codes, scales = self.memo.get(self.slots[i], x, (self.generation,), lambda: module.quantize_input(x, fast))
        return module._matmul(codes, scales, x, fast)

    def _gemm_fusable(self) -> bool:
        """One GEMM for the group: wanted, and every member's weight is packed (kept int8 copies are separate
        tensors: stacking them would cost a copy per call)."""
        return self.fused_gemm and all(m.weight_int8 is None for m in self.members)

    def _fused_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """[..., sum of the members' out_features]: one GEMM against the members' weights stacked along N
        (`w4a4_matmul_stacked`). Each output element is computed as the member's own GEMM computes it (exact
        integer sum, the same fp32 epilogue), so the slices equal the members' separate outputs bitwise."""
        members = self.members
        for m in members:
            if m.weight_scale.numel() != m.out_features or (m.bias is not None and m.bias.numel() != m.out_features):
                raise ValueError(f"faircalib.deploy.W4A4Linear: weight_scale {tuple(m.weight_scale.shape)} or bias of "
                                 f"a {m.out_features}-output member of a shared input quantization does not hold "
                                 f"one value per output channel")
        fast = all(m._fast_path(x) for m in members)
        codes, scales = members[0].quantize_input(x, fast)
        weight_scale = torch.cat([m.weight_scale.reshape(-1) for m in members])
        bias = None
        if any(m.bias is not None for m in members):
            bias = torch.cat([m.weight_scale.new_zeros(m.out_features) if m.bias is None else m.bias.float()
                              for m in members])
        packed = [m.weight_packed for m in members]
        k = members[0].in_features
        if fast:
            out = registry.implementation("w4a4_matmul_stacked", x.device)(
                codes.reshape(-1, k), scales.reshape(-1, 1), packed, weight_scale, bias, x.dtype)
        else:
            out = kernels.w4a4_matmul_stacked(codes, scales, packed, weight_scale, bias, x.dtype)
            if not torch.compiler.is_compiling():
                for m in members:
                    m._checked_buffers = m._kernel_buffers()  # the public ops accepted them
        return out.reshape(*x.shape[:-1], weight_scale.numel())

    def _member_slice(self, module: W4A4Linear, out: torch.Tensor) -> torch.Tensor:
        start = 0
        for m in self.members:
            if m is module:
                return out[..., start:start + m.out_features]
            start += m.out_features
        raise RuntimeError("faircalib.deploy: a W4A4Linear points to a shared input quantization that does not "
                           "list it")

    def _hand(self, module: W4A4Linear, x: torch.Tensor, compute):
        """Under torch.compile. The memo's bookkeeping does not trace (graph breaks at every linear), and the
        compiler does not merge equal custom-op calls, so the members hand the result on within one traced forward:
        the first computes, later ones reuse it for the same tensor, and the last member clears it, so no tensor
        outlives the call and the compiled code sees the same state every time. The members' equality is trusted
        from the link (the eager path re-checks it)."""
        handed = self._handed
        if handed is None or handed[0] is not x:
            handed = (x, compute())
        self._handed = None if module is self.members[-1] else handed
        return handed[1]

    def _index(self, module: W4A4Linear) -> int:
        for i, m in enumerate(self.members):
            if m is module:
                return i
        raise RuntimeError("faircalib.deploy: a W4A4Linear points to a shared input quantization that does not "
                           "list it")

    def remove(self, module: W4A4Linear) -> None:
        i = self._index(module)
        del self.members[i], self._states[i]
        self.memo = InputMemo()  # a fresh memo: a stored result is released once the remaining members read it
        self.slots = [self.memo.join() for _ in self.members]

    def __getstate__(self) -> dict:
        # A copy re-checks its members at first use (its buffers are new tensors) and holds no stored input.
        state = dict(self.__dict__)
        state["_states"] = [None] * len(self.members)
        state["_handed"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"fused_gemm": True, **state})  # pickled by a faircalib before the group GEMM


def share_input_quantization(modules: Sequence[W4A4Linear], names: Sequence[str] | None = None) -> None:
    """Link W4A4Linears that read the same input so it is transformed and quantized once per forward.

    Raises ValueError (naming the modules) unless their `in_features`, `act_bits`, `act_clip` and transform
    buffers (`channel_scale`, `left`, `right`) are bitwise equal. A module already linked leaves its old group; a
    single module is simply unlinked."""
    modules = list(modules)
    if not modules or not all(isinstance(m, W4A4Linear) for m in modules):
        raise TypeError("faircalib.deploy.share_input_quantization: expects a non-empty list of W4A4Linear modules")
    if len({id(m) for m in modules}) != len(modules):
        raise ValueError("faircalib.deploy.share_input_quantization: a module is listed twice")
    problems = _mismatches(modules)
    if problems:
        label = f" ({', '.join(names)})" if names else ""
        raise ValueError(f"faircalib.deploy.share_input_quantization: the modules{label} cannot share one "
                         f"activation quantization: {'; '.join(problems)}")
    for m in modules:
        if m.shared_input is not None:
            m.shared_input.remove(m)
            m.shared_input = None
    if len(modules) == 1:
        return
    group = SharedInputQuantization(modules)  # the members were just found equal
    for m in modules:
        m.shared_input = group


def share_model_input_quantization(model: nn.Module) -> int:
    """Link the W4A4Linears of every block input group (INPUT_GROUPS: q/k/v, gate/up) of a LLaDA/Dream-layout
    model; returns the number of groups linked. A group whose members differ (a checkpoint calibrated with one
    activation clip per linear, by a faircalib before the shared quantizer) stays unlinked, with a warning: each
    of its linears then quantizes its input itself, exactly as before. Models of another layout are left alone."""
    from faircalib.models.adapter import detect_layout, get_adapter

    try:
        detect_layout(model)
    except ValueError:
        return 0
    adapter = get_adapter(model)
    linked, unlinked = 0, []
    for b, block in enumerate(adapter.blocks):
        for group in adapter.input_groups(block).values():
            members = {role: m for role, m in group.items() if isinstance(m, W4A4Linear)}
            if len(members) < 2:
                continue
            try:
                share_input_quantization(list(members.values()))
            except ValueError:  # the members differ (the modules themselves are distinct W4A4Linears)
                unlinked.append(f"block {b} {'/'.join(members)}")
                continue
            linked += 1
    if unlinked:
        warnings.warn(f"faircalib.deploy: {len(unlinked)} input group(s) (e.g. {unlinked[0]}) hold different "
                      f"activation clips or transforms per linear (calibrated by an older faircalib): their "
                      f"linears quantize the shared input separately, which is correct but slower; calibrate "
                      f"again for one quantization per input", stacklevel=2)
    return linked


def keep_weights_unpacked(model: nn.Module, keep: bool = True) -> int:
    """`W4A4Linear.keep_weight_unpacked(keep)` on every W4A4Linear of `model` (memory for time: see there);
    returns how many there are."""
    linears = [m for m in model.modules() if isinstance(m, W4A4Linear)]
    for linear in linears:
        linear.keep_weight_unpacked(keep)
    return len(linears)


def convert_to_w4a4(model: nn.Module) -> list[str]:
    """Replace every deployable QuantLinear in `model` by a W4A4Linear, in place, and link the linears of each
    input group (`share_model_input_quantization`). Returns the names of the QuantLinears left as they are (not
    deployable: e.g. 16-bit activations or per-group weights)."""
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
