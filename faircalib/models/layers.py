"""Building blocks shared by the LLaDA and Dream implementations: RMSNorm and bidirectional attention."""
import torch
import torch.nn.functional as F
from torch import nn

from faircalib.models.rope import apply_rotary


class RMSNorm(nn.Module):
    """RMSNorm as both families publish it: normalise in fp32, cast back to the input dtype, then scale.

    x: [..., D] -> [..., D]. The weight multiply happens after the cast (not in fp32), which is what makes a bf16
    model match the public code bit for bit. `bias` exists only for LLaDA configs with `bias_for_layer_norm`.
    """

    def __init__(self, size: int, eps: float, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight * xf.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def bidirectional_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_heads: int,
    n_kv_heads: int,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    rope_in_fp32: bool,
) -> torch.Tensor:
    """Full (non-causal) multi-head attention with RoPE and grouped KV heads.

    q: [B, L, n_heads*Dh]; k, v: [B, L, n_kv_heads*Dh]; position_embeddings: (cos, sin) [B|1, L, Dh] fp32;
    attention_mask: bool [B, 1, 1, L] (True = may attend to that key) or None -> [B, L, n_heads*Dh].
    Scale is SDPA's default 1/sqrt(Dh), as in both public implementations.
    """
    batch, length, width = q.shape
    head_dim = width // n_heads
    q = q.view(batch, length, n_heads, head_dim).transpose(1, 2)
    k = k.view(batch, length, n_kv_heads, head_dim).transpose(1, 2)
    v = v.view(batch, length, n_kv_heads, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q = apply_rotary(q, cos, sin, rope_in_fp32)
    k = apply_rotary(k, cos, sin, rope_in_fp32)
    if n_kv_heads != n_heads:
        # Each KV head serves n_heads / n_kv_heads consecutive query heads (Qwen2's repeat_kv layout).
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
        v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=False)
    return out.transpose(1, 2).reshape(batch, length, width)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, elementwise; both [..., F]."""
    return F.silu(gate) * up


def swiglu_mlp(gate_proj: nn.Module, up_proj: nn.Module, down: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """down(silu(gate_proj(x)) * up_proj(x)). Deployed W4A4 gate and up projections linked to one input form the
    SwiGLU in their one GEMM's epilogue, with down's channel scale where it can be folded in
    (`SharedInputQuantization.swiglu`); otherwise `swiglu_down`."""
    group = getattr(gate_proj, "shared_input", None)
    fused = None if group is None else group.swiglu(gate_proj, up_proj, down, x)
    if fused is not None:
        h, scaled = fused
        return down.forward_scaled(h) if scaled else down(h)
    return swiglu_down(down, gate_proj(x), up_proj(x))


def swiglu_down(down: nn.Module, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up). A down projection that computes the SwiGLU inside its own input kernel (a deployed
    W4A4Linear with `fuse_swiglu` set) gets gate and up instead of their product."""
    if getattr(down, "fuse_swiglu", False):
        return down.forward_swiglu(gate, up)
    return down(swiglu(gate, up))
