"""`nonzero_known(mask, count)`: the indices of mask's True entries when their count is already known, without the
wait for the GPU that `torch.nonzero` costs (it reads the count back to size its output). The samplers read the
count once per step, with their checks, and then find every place they need this way.

torch.nonzero_static has a CUDA kernel from torch 2.6 on; with an older torch, CUDA tensors take `nonzero`: the same
indices, one more wait per call (untested on a GPU: the GPU machines run 2.11)."""
from __future__ import annotations

import torch
from torch.torch_version import TorchVersion

_WITHOUT_STATIC_KERNEL = {"cuda"} if TorchVersion(torch.__version__) < (2, 6) else set()


def nonzero_known(mask: torch.Tensor, count: int) -> torch.Tensor:
    """mask: bool tensor with `count` True entries -> their indices [count, mask.dim()] int64, row-major order."""
    if mask.device.type in _WITHOUT_STATIC_KERNEL:
        return mask.nonzero()
    return torch.nonzero_static(mask, size=count)
