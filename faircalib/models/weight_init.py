"""The one initialisation rule both families use for fresh (untrained) weights.

Linear and embedding weights ~ N(0, std), biases 0, norm weights 1 (Dream's `_init_weights`; LLaDA publishes a
layer-dependent "mitchell" rule, which matters only for training from scratch, not for matching a checkpoint).
Random state comes from the caller's generator; with `generator=None` (the transformers `_init_weights` hook)
torch's default generator is used, as in any transformers model.
"""
import torch
from torch import nn

from faircalib.models.layers import RMSNorm


@torch.no_grad()
def init_module_(module: nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """Initialise the parameters owned directly by `module` in place (not its children's)."""
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, std, generator=generator)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, std, generator=generator)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, RMSNorm):
        module.weight.fill_(1.0)
        if module.bias is not None:
            module.bias.zero_()
