"""Running remote-code models (trust_remote_code=True) that follow the LLaDA or Dream layout block by block.

Their blocks return tuples and take family-specific arguments; `RemoteBlock` wraps each one so it is called like
a native block, `block(hidden, **block_kwargs) -> hidden`, and `RemoteRunner` embeds, builds the block kwargs
and applies the head from the layout's module paths. Only what the public modeling files need is passed:
LLaDA blocks compute their own rotary embedding and cannot mask padding (padded batches are refused); Dream
layers take (cos, sin) in the activation dtype and an SDPA mask.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from faircalib.models.base import rotary_block_kwargs


class RemoteBlock(nn.Module):
    """A remote-code block called as `block(hidden, **kwargs) -> hidden` (its tuple output's first item)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, hidden: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.inner(hidden, **kwargs)[0]


class RemoteRunner:
    """blocks / embed_inputs / block_kwargs / head for a remote-code model, from its layout and config."""

    def __init__(self, model: nn.Module, layout):
        self.model, self.layout, self.config = model, layout, model.config
        self.blocks = [RemoteBlock(block) for block in model.get_submodule(layout.blocks)]

    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.get_submodule(self.layout.embed)(input_ids)
        if getattr(self.config, "input_emb_norm", False):
            hidden = hidden * (self.config.d_model**0.5)
        return hidden

    def block_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        if self.layout.family == "llada":
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise ValueError(
                    f"faircalib.models.remote: {type(self.model).__name__} (remote-code LLaDA) cannot mask padding: "
                    "the public LLaDA code hard-codes attn_mask=None. Load the checkpoint natively (trust_remote_code="
                    "False) or run unpadded batches."
                )
            return {}
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        kwargs = rotary_block_kwargs(type(self.model).__name__, input_ids, attention_mask, head_dim,
                                     float(self.config.rope_theta))
        dtype = self.model.get_submodule(self.layout.embed).weight.dtype
        cos, sin = kwargs["position_embeddings"]
        return {"position_embeddings": (cos.to(dtype), sin.to(dtype)), "attention_mask": kwargs["attention_mask"]}

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.model.get_submodule(self.layout.final_norm)(hidden)
        if getattr(self.config, "weight_tying", False):
            logits = F.linear(hidden, self.model.get_submodule(self.layout.embed).weight)
        else:
            logits = self.model.get_submodule(self.layout.lm_head)(hidden)
        if getattr(self.config, "scale_logits", False):
            logits = logits * (1 / math.sqrt(self.config.d_model))
        return logits
