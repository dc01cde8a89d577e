"""Per-layer activation magnitudes at every block linear input: how hard each input is to quantize per token.

A large max/median ratio means a few outlier values set the per-token scale and crush the rest to zero at
4 bits (QDLM reports the largest outliers at the FFN down-projection input of LLaDA and Dream).
"""
from __future__ import annotations

import torch

from faircalib.models import get_adapter


@torch.no_grad()
def activation_stats(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """input_ids: [B, L] int64 (attention_mask [B, L] bool/int, 1 = real token) -> list of dicts, one per block
    and role in order: `{"block", "role", "max", "median", "ratio"}` of |x| over the real tokens' elements."""
    adapter = get_adapter(model)
    keep = None if attention_mask is None else attention_mask.bool()
    records, handles = [], []

    def record(index, role):
        def hook(module, args):
            x = args[0].detach().float().abs()
            x = x.reshape(-1, x.shape[-1]) if keep is None else x[keep]
            records.append(
                {"block": index, "role": role, "max": x.max().item(), "median": x.median().item()}
            )

        return hook

    for index, block in enumerate(adapter.blocks):
        for role, linear in adapter.linears(block).items():
            handles.append(linear.register_forward_pre_hook(record(index, role)))
    try:
        adapter.logits(input_ids, attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    for r in records:
        r["ratio"] = r["max"] / r["median"] if r["median"] > 0 else float("inf")
    return records
