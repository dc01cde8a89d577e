"""`QuantLinear`: a block linear in its fake-quantized form, with the learnable pieces of FlatQuant.

During calibration the weight stays in full precision and the (shared) input transform, the weight clip logits
and the activation clip logit are learned. `fold()` moves the transform's inverse into the weight; what remains
online is the transform of the input. Deployment reads `quantized_weight()` and the transform.

Linears that read the same input (q/k/v, gate/up) share one activation quantizer, as in FlatQuant: one transform
object, one activation clip parameter (the same `nn.Parameter` registered in each of them, so every state dict
still holds `<linear>.act_clip_logit`) and one `InputMemo`, so fake_quant_act(T(x)) is computed once per input and
every reader gets the same tensor (its gradient is the sum of the readers' gradients). `wrap_block` builds them.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from faircalib import kernels
from faircalib.calib.input_memo import InputMemo
from faircalib.config import QuantSpec
from faircalib.kernels.quant_reference import true_div

# FlatQuant's clip initialisation: sigmoid(4.0) ≈ 0.982.
CLIP_LOGIT_INIT = 4.0


class QuantLinear(nn.Module):
    """y = fake_quant_act(T(x)) · fake_quant_weight(W')ᵀ + b, with W' = T's inverse folded into W.

    x: [..., K] any float dtype → [..., N] same dtype.

    Sharing an input with other linears (module doc): pass the group's `act_clip_logit` (one scalar
    `nn.Parameter`) and `input_memo` (one `InputMemo`) to each of them, with the same `input_transform` and
    `act_spec`. Without them the linear gets its own clip (when `learn_clips`) and its own memo."""

    def __init__(self, linear: nn.Linear, weight_spec: QuantSpec | None, act_spec: QuantSpec | None,
                 input_transform: nn.Module | None = None, learn_clips: bool = False, *,
                 act_clip_logit: nn.Parameter | None = None, input_memo: InputMemo | None = None):
        super().__init__()
        if act_clip_logit is not None and (act_spec is None or act_clip_logit.shape != ()):
            raise ValueError("QuantLinear: a shared act_clip_logit must be a scalar parameter, and needs act_spec")
        if weight_spec is not None:
            weight_spec.check_dim(linear.in_features, f"QuantLinear({linear.out_features}x{linear.in_features})")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.weight_spec, self.act_spec = weight_spec, act_spec
        self.input_transform = input_transform
        self.folded = input_transform is None
        n = linear.out_features
        self.weight_clip_logit = (nn.Parameter(torch.full((n, 1), CLIP_LOGIT_INIT), requires_grad=learn_clips)
                                  if learn_clips and weight_spec is not None else None)
        if act_clip_logit is None and learn_clips and act_spec is not None:
            act_clip_logit = nn.Parameter(torch.tensor(CLIP_LOGIT_INIT))
        self.act_clip_logit = act_clip_logit
        self.input_memo = InputMemo() if input_memo is None else input_memo
        self.memo_slot = self.input_memo.join()
        # Set by GPTQ: fixed per-channel/group scales, so the codes it chose are reproduced exactly.
        self.register_buffer("fixed_weight_scale", None)

    def weight_clip_ratio(self) -> torch.Tensor | None:
        return None if self.weight_clip_logit is None else torch.sigmoid(self.weight_clip_logit)

    def act_clip_ratio(self) -> torch.Tensor | None:
        """The activation clip ratio (of the input group: its linears share the parameter), [] or None."""
        return None if self.act_clip_logit is None else torch.sigmoid(self.act_clip_logit)

    def effective_weight(self) -> torch.Tensor:
        """The full-precision weight the quantizer sees: W with the transform's inverse folded in. [N, K]"""
        if self.folded:
            return self.weight
        # fp32 while gradients flow (training steps); float64 otherwise, exactly what `fold()` will store.
        return self.input_transform.fold_into_weight(self.weight, exact=not torch.is_grad_enabled())

    def fake_quant_weight(self) -> torch.Tensor:
        w = self.effective_weight()
        spec = self.weight_spec
        if spec is None:
            return w
        if self.fixed_weight_scale is not None:
            codes, scales = self.quantized_weight()
            return _dequantize(codes, scales, spec.group_size).to(w.dtype)
        clip = self.weight_clip_ratio()
        return kernels.fake_quant_weight(w, bits=spec.bits, group_size=spec.group_size, symmetric=spec.symmetric,
                                         clip_ratio=1.0 if clip is None else clip)

    def quantized_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 [N, K], scales fp32 [N, G]) of the effective weight: the codes deployment packs."""
        spec = self.weight_spec
        if spec is None or not spec.symmetric:
            raise ValueError("QuantLinear.quantized_weight: only symmetric weight quantization is deployable")
        with torch.no_grad():  # the exact (float64) fold, as `fold()` stores it
            w = self.effective_weight().float()
        if self.fixed_weight_scale is not None:
            scales = self.fixed_weight_scale
        else:
            clip = self.weight_clip_ratio()
            clip = torch.ones(w.shape[0], 1, device=w.device) if clip is None else clip.detach().float()
            scales = _clipped_scales(w, clip, spec.bits, spec.group_size)
        return _codes(w, scales, spec.bits, spec.group_size), scales

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """fake_quant_act(T(x), act clip): the input as the weight sees it, [..., K] x.dtype. Computed once per
        input for the linears sharing this one's memo (the first reader computes, the others reuse it)."""
        if self.input_transform is None and self.act_spec is None:
            return x
        transform = self.input_transform
        key = (transform, self.act_spec, self.act_clip_logit,
               *(() if transform is None else (*transform.parameters(), *transform.buffers())))
        return self.input_memo.get(self.memo_slot, x, key, lambda: self._quantize_input(x))

    def _quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.act_spec is not None:
            clip = self.act_clip_ratio()
            x = kernels.fake_quant_act(x, bits=self.act_spec.bits, clip_ratio=1.0 if clip is None else clip)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantized_input(x)
        return F.linear(x, self.fake_quant_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the transform's inverse into the weight; the transform itself stays online for the input."""
        if not self.folded:
            self.weight.copy_(self.input_transform.fold_into_weight(self.weight))
            self.folded = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # GPTQ's pinned scales exist only after GPTQ ran; make room for them when loading such a state.
        key = prefix + "fixed_weight_scale"
        if key in state_dict and self.fixed_weight_scale is None:
            self.fixed_weight_scale = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w={self.weight_spec}, a={self.act_spec}, "
                f"transform={type(self.input_transform).__name__ if self.input_transform is not None else None}")


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] → [N, G, g] (G = 1 for per-channel)."""
    g = w.shape[1] if group_size == -1 else group_size
    return w.reshape(w.shape[0], -1, g)


def _clipped_scales(w: torch.Tensor, clip: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """scale = clip·absmax/qmax per channel/group, fp32 [N, G] (the project numerics; an IEEE division as in the
    kernels: CUDA turns division by a Python number into a reciprocal multiply, one ulp off)."""
    absmax = _grouped(w, group_size).abs().amax(-1)
    return true_div(clip.reshape(w.shape[0], -1) * absmax, 2 ** (bits - 1) - 1)


def _codes(w: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """clamp(round_half_even(w / scale)) as int8 [N, K]; a zero scale (all-zero group) gives zero codes."""
    qmax = 2 ** (bits - 1) - 1
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))[..., None]
    return torch.clamp(torch.round(_grouped(w, group_size) / safe), -qmax - 1, qmax).reshape(w.shape).to(torch.int8)


def _dequantize(codes: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    return (_grouped(codes.float(), group_size) * scales[..., None]).reshape(codes.shape)


def quantized_linears(model: nn.Module) -> Iterator[tuple[str, QuantLinear]]:
    """Every QuantLinear in `model`, with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            yield name, module
