"""QuaRot's residual-stream rotation, folded into the weights of a model (no online cost).

With Q orthogonal, RMSNorm(x·Q) = RMSNorm(x)·Q once the norm's weight is folded into the linears that read it,
so the whole residual stream can live in the rotated basis: embeddings E·Q, readers W·Q, writers Qᵀ·W, LM head W·Q.
Rotating spreads outlier channels over all channels, which is what makes 4-bit activations work.
"""
from __future__ import annotations

import torch
from torch import nn

from faircalib.calib.transforms import HadamardTransform


@torch.no_grad()
def _scale_input_columns(linear: nn.Linear, scale: torch.Tensor) -> None:
    linear.weight.mul_(scale.to(linear.weight.dtype))


@torch.no_grad()
def fold_norm_weights(adapter) -> None:
    """Move every RMSNorm weight into the linears that read its output; the norms become weight 1."""
    for block in adapter.blocks:
        lin = adapter.linears(block)
        attn_norm, mlp_norm = adapter.norms(block)
        for norm, readers in ((attn_norm, ("q", "k", "v")), (mlp_norm, ("gate", "up"))):
            for role in readers:
                _scale_input_columns(lin[role], norm.weight.float())
            norm.weight.fill_(1.0)
    _scale_input_columns(adapter.lm_head, adapter.final_norm.weight.float())
    adapter.final_norm.weight.fill_(1.0)


@torch.no_grad()
def rotate_residual(adapter, generator: torch.Generator) -> HadamardTransform:
    """Rotate the residual stream of the adapter's model by a random Hadamard Q [D, D]; returns Q's transform."""
    if adapter.lm_head.weight.data_ptr() == adapter.embed.weight.data_ptr():
        raise NotImplementedError("quarot: the model ties its LM head to the embeddings; the rotation folds the final "
                                  "norm into the head, which would change the embeddings too. Untie them first.")
    fold_norm_weights(adapter)
    emb = adapter.embed.weight
    rotation = HadamardTransform(emb.shape[1], generator).to(emb.device)
    q = rotation.matrix().double()
    emb.copy_((emb.double() @ q).to(emb.dtype))
    for block in adapter.blocks:
        lin = adapter.linears(block)
        for role in ("q", "k", "v", "gate", "up"):
            w = lin[role].weight
            w.copy_((w.double() @ q).to(w.dtype))
        for role in ("o", "down"):
            w = lin[role].weight
            w.copy_((q.t() @ w.double()).to(w.dtype))
            if lin[role].bias is not None:
                lin[role].bias.copy_((lin[role].bias.double() @ q).to(lin[role].bias.dtype))
    head = adapter.lm_head.weight
    head.copy_((head.double() @ q).to(head.dtype))
    return rotation
