"""Rotary position embeddings in the rotate-half (GPT-NeoX) layout, as both LLaDA and Dream publish them.

The angles are always computed in fp32 (both public implementations disable autocast for this). The two families
differ only in the precision of the rotation itself: LLaDA rotates q/k in fp32 (`rope_full_precision`) and casts
back; Dream (Qwen2) casts cos/sin to the activation dtype and rotates there. `apply_rotary(..., in_fp32=...)`
reproduces either.
"""
import torch


def positions_from_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """attention_mask: [B, L] (1 = real token, 0 = padding) -> position ids [B, L] int64.

    Real tokens are numbered 0, 1, ... in order, skipping padding (as Dream's generation code does with left
    padding), so a left-padded prompt sees the same positions as the unpadded one. Padding positions get 0; they
    are masked out as keys, so their value does not matter.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions: [B, L] int -> (cos, sin), each [B, L, head_dim] fp32 (frequencies repeated over both halves)."""
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)
    angles = positions.float()[..., None] * inv_freq  # [B, L, head_dim / 2]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """x: [..., D] -> [-x[D/2:], x[:D/2]] along the last axis."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, in_fp32: bool) -> torch.Tensor:
    """x: [B, H, L, D]; cos, sin: [B, L, D] fp32 -> rotated x, same shape and dtype as x."""
    cos, sin = cos[:, None], sin[:, None]
    if in_fp32:
        xf = x.float()
        return (xf * cos + rotate_half(xf) * sin).to(x.dtype)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
