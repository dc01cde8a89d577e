"""Linked W4A4Linears of one input (docs/design.md, "Deployment").

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
GEMM's int8 operand. A gate/up group hands the SwiGLU to that GEMM's epilogue (`swiglu`, called by
`layers.swiglu_mlp`; `swiglu_epilogue`, on by default): gate and up never go to memory. With weights kept unpacked
(`keep_weights_unpacked(model)`), the members' int8 copies are row slices of one stacked tensor
(`stack_kept_weights`) and the group's GEMM is `int8_matmul` on it. Not taken where the memo is not (inference
tensors), or where a member's int8 copy is no longer its slice (unpacked again after its packed weight changed,
moved by `.to()`, kept per module): then one GEMM per member.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from faircalib import kernels
from faircalib.kernels import registry
from faircalib.calib.input_memo import InputMemo
from faircalib.deploy.w4a4_linear import W4A4Linear

# What decides a W4A4Linear's activation codes besides x: equal in every member of a shared input quantization.
ACT_BUFFERS = ("act_clip", "channel_scale", "left", "right")


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
        self.swiglu_epilogue = True  # gate/up groups: the SwiGLU in that GEMM's epilogue (`swiglu`)
        self._kept: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None  # `stack_kept_weights`

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
            weight = self._group_weight()
            if weight is not None:
                return self._member_slice(module, self._hand(module, x, lambda: self._fused_matmul(x, weight)))
            return module._matmul(*self._hand(module, x, lambda: module.quantize_input(x)), x, False)
        i = self._index(module)
        if not _same_state(self._states[i], _act_state(module)):
            self.check()
        weight = self._group_weight()
        if weight is not None:
            key = (self.generation, *(weight if isinstance(weight, list) else [weight]),
                   *(t for m in self.members for t in (m.weight_scale, m.bias)))
            if self.memo.memoizes(x, key):
                return self._member_slice(module, self.memo.get(self.slots[i], x, key,
                                                                lambda: self._fused_matmul(x, weight)))
        fast = module._fast_path(x)
        codes, scales = self.memo.get(self.slots[i], x, (self.generation,), lambda: module.quantize_input(x, fast))
        return module._matmul(codes, scales, x, fast)

    def _group_weight(self) -> torch.Tensor | list[torch.Tensor] | None:
        """The operand of the group's one GEMM: the stacked kept int8 weight (`_kept_stack`), or the members'
        packed weights where none keeps an int8 copy; None where the group runs a GEMM per member (`fused_gemm`
        off, or int8 copies that are not one stack's slices)."""
        if not self.fused_gemm:
            return None
        stacked = self._kept_stack()
        if stacked is not None:
            return stacked
        if all(m.weight_int8 is None for m in self.members):
            return [m.weight_packed for m in self.members]
        return None

    def stack_kept_weights(self) -> None:
        """Re-point the members' kept int8 weights (`W4A4Linear.keep_weight_unpacked`) at the row slices of one
        stacked tensor, so the group's one GEMM reads them as they are (a stack built per call would cost a copy);
        the memory is that of the separate copies. No stack unless every member keeps its int8 weight."""
        self._kept = None
        if any(m.weight_int8 is None for m in self.members):
            return
        with torch.no_grad():
            stacked = torch.cat([m._unpacked_weight() for m in self.members])
        views, start = [], 0
        for m in self.members:
            m.weight_int8 = stacked[start:start + m.out_features]
            views.append(m.weight_int8)
            start += m.out_features
        self._kept = (stacked, tuple(views))

    def _kept_stack(self) -> torch.Tensor | None:
        """The stacked int8 weight while every member's int8 copy is still its slice; else None (one GEMM per
        member), and eager calls release the stale stack. Eager calls first let each member unpack again if its
        packed weight changed (which replaces its copy)."""
        kept = self._kept
        if kept is None:
            return None
        compiling = torch.compiler.is_compiling()
        if not compiling:
            for m in self.members:
                m._unpacked_weight()
        if all(m.weight_int8 is view for m, view in zip(self.members, kept[1])):
            return kept[0]
        if not compiling:
            self._kept = None
        return None

    def _fused_matmul(self, x: torch.Tensor, weight: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """[..., sum of the members' out_features]: one GEMM against the members' weights stacked along N
        (`w4a4_matmul_stacked` on the packed weights, or `int8_matmul` on the stacked kept copy: `_group_weight`).
        Each output element is computed as the member's own GEMM computes it (exact integer sum, the same fp32
        epilogue), so the slices equal the members' separate outputs bitwise."""
        out = self._group_gemm("w4a4_matmul_stacked" if isinstance(weight, list) else "int8_matmul", x, (weight,))
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _group_gemm(self, op: str, x: torch.Tensor, weights: tuple, extra: tuple = ()) -> torch.Tensor:
        """The kernel op `op` (`w4a4_matmul_stacked`, `int8_matmul`, `w4a4_matmul_swiglu`) on x's codes, quantized
        once by the first member: op(codes, scales, *weights, the members' weight scales and biases stacked along
        N, *extra, x.dtype) -> [tokens, op's width]. Calls outside the members' fast paths go through the public
        op, which checks the stacked sizes (each member's are checked here, with its buffers), and then let them
        take the fast path."""
        members = self.members
        fast = all(m._fast_path(x) for m in members)
        if not fast:
            for m in members:
                if m.weight_scale.numel() != m.out_features or (m.bias is not None and
                                                                m.bias.numel() != m.out_features):
                    raise ValueError(f"faircalib.deploy.W4A4Linear: weight_scale {tuple(m.weight_scale.shape)} or "
                                     f"bias of a {m.out_features}-output member of a shared input quantization does "
                                     f"not hold one value per output channel")
        codes, scales = members[0].quantize_input(x, fast)
        weight_scale = torch.cat([m.weight_scale.reshape(-1) for m in members])
        bias = None
        if any(m.bias is not None for m in members):
            bias = torch.cat([m.weight_scale.new_zeros(m.out_features) if m.bias is None else m.bias.float()
                              for m in members])
        k = members[0].in_features
        args = (codes.reshape(-1, k), scales.reshape(-1, 1), *weights, weight_scale, bias, *extra, x.dtype)
        if fast:
            return registry.implementation(op, x.device)(*args)
        out = getattr(kernels, op)(*args)
        if not torch.compiler.is_compiling():
            for m in members:
                m._checked_buffers = m._kernel_buffers()  # the public ops accepted them
        return out

    def swiglu(self, gate: W4A4Linear, up: W4A4Linear, down: nn.Module,
               x: torch.Tensor) -> tuple[torch.Tensor, bool] | None:
        """(h, scaled) for `layers.swiglu_mlp`: h = silu(gate(x)) · up(x) from the group's one GEMM with the SwiGLU
        in its epilogue (`kernels.w4a4_matmul_swiglu`: gate and up never go to memory on Hopper), times down's
        channel scale where `scaled` (then down's activation pass skips it: `W4A4Linear.forward_scaled`). The
        channel scale is folded in where down's own pass would round the scaled input to x's dtype as the epilogue
        does: factors of x's dtype (the Triton kernels round it to theirs), or fp32 x. None where this does not
        apply: `swiglu_epilogue` or `fused_gemm` off, a group other than exactly (gate, up), int8 weight copies
        kept, a down projection that is not an unlinked W4A4Linear of gate's width taking gate and up itself
        (`fuse_swiglu`), or a GPU where the op would form the SwiGLU after its GEMM (`kernels.swiglu_in_epilogue`:
        inside the op a compiled graph could not fuse it; on the CPU the reference runs the same PyTorch ops either
        way). Module hooks of gate and up do not fire on this path, nor down's where `scaled`."""
        if x.device.type != "cpu" and not kernels.swiglu_in_epilogue(x.device, gate.in_features):
            return None
        if not (self.swiglu_epilogue and len(self.members) == 2 and self.members[0] is gate and
                self.members[1] is up and isinstance(down, W4A4Linear) and down.shared_input is None and
                not down.fuse_swiglu and down.in_features == gate.out_features == up.out_features and
                isinstance(self._group_weight(), list)):
            return None
        if not torch.compiler.is_compiling() and not all(  # traced code trusts the link, as `forward` does
                _same_state(state, _act_state(m)) for state, m in zip(self._states, self.members)):
            self.check()
        factors = [t for t in (down.left, down.right) if t is not None]
        scaled = down.channel_scale is not None and (x.dtype == torch.float32 or
                                                     all(t.dtype == x.dtype for t in factors))
        h = self._group_gemm("w4a4_matmul_swiglu", x, (gate.weight_packed, up.weight_packed),
                             (down.channel_scale if scaled else None,))
        return h.reshape(*x.shape[:-1], gate.out_features), scaled

    def _member_slice(self, module: W4A4Linear, out: torch.Tensor) -> torch.Tensor:
        start = sum(m.out_features for m in self.members[:self._index(module)])
        return out[..., start:start + module.out_features]

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
        self._kept = None  # the stack holds the leaving member's rows: a GEMM per member (`stack_kept_weights` again)

    def __getstate__(self) -> dict:
        # A copy re-checks its members at first use (its buffers are new tensors) and holds no stored input.
        state = dict(self.__dict__)
        state["_states"] = [None] * len(self.members)
        state["_handed"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        # pickled by a faircalib before the group GEMM, the stacked kept weights or the SwiGLU epilogue
        self.__dict__.update({"fused_gemm": True, "_kept": None, "swiglu_epilogue": True, **state})


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


def shared_input_groups(model: nn.Module) -> list[SharedInputQuantization]:
    """The input groups linked in `model`, each once, in module order: where their switches (`fused_gemm`,
    `swiglu_epilogue`) are set for a whole model."""
    groups = {id(m.shared_input): m.shared_input for m in model.modules()
              if isinstance(m, W4A4Linear) and m.shared_input is not None}
    return list(groups.values())


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
