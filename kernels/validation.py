"""Input checks shared by every public kernel op.

Each check raises before any heavy work, with a message that names the op, the argument, what it got (shape,
dtype or value) and how to fix it. Ops call these at their boundary; kernels and references trust their inputs.
"""
from __future__ import annotations

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_float_tensor(op: str, name: str, t: object) -> None:
    """TypeError unless `t` is a floating-point tensor (fp32/fp16/bf16 and friends)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"faircalib.kernels.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"faircalib.kernels.{op}: {name} must be a floating-point tensor (fp32/fp16/bf16), got "
                        f"dtype {t.dtype} with shape {tuple(t.shape)}; convert it first, e.g. {name}.float()")


def check_min_dims(op: str, name: str, t: torch.Tensor, ndim: int) -> None:
    """ValueError unless `t` has at least `ndim` dimensions."""
    if t.dim() < ndim:
        raise ValueError(f"faircalib.kernels.{op}: {name} needs at least {ndim} dimension(s), got shape "
                         f"{tuple(t.shape)}; add a leading dimension, e.g. {name}.unsqueeze(0)")


def check_dims(op: str, name: str, t: torch.Tensor, ndim: int) -> None:
    """ValueError unless `t` has exactly `ndim` dimensions."""
    if t.dim() != ndim:
        raise ValueError(f"faircalib.kernels.{op}: {name} must have exactly {ndim} dimension(s), got shape "
                         f"{tuple(t.shape)}")


def check_bits(op: str, bits: object) -> None:
    """TypeError unless `bits` is an int; ValueError unless MIN_BITS <= bits <= MAX_BITS."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"faircalib.kernels.{op}: bits must be an int in [{MIN_BITS}, {MAX_BITS}], "
                        f"got {bits!r} ({type(bits).__name__})")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"faircalib.kernels.{op}: bits={bits} is out of range; codes are stored as int8, so use "
                         f"{MIN_BITS} <= bits <= {MAX_BITS}")


def check_group_size(op: str, group_size: object, k: int) -> None:
    """ValueError unless `group_size` is -1 (one group per row) or a positive int that divides `k`."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"faircalib.kernels.{op}: group_size must be an int (-1 for one group per row), "
                        f"got {group_size!r} ({type(group_size).__name__})")
    if group_size == -1:
        return
    if group_size <= 0 or k % group_size != 0:
        raise ValueError(f"faircalib.kernels.{op}: group_size={group_size} must be -1 or a positive divisor of "
                         f"the last dimension K={k}; pad K or pick a divisor (e.g. 128 for K=4096)")


def check_same_shape(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """ValueError unless `a` and `b` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"faircalib.kernels.{op}: {name_a} and {name_b} must have the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def check_same_device(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """ValueError unless `a` and `b` live on the same device."""
    if a.device != b.device:
        raise ValueError(f"faircalib.kernels.{op}: {name_a} is on {a.device} but {name_b} is on {b.device}; "
                         f"move both to one device")


def check_broadcastable(op: str, name: str, t: torch.Tensor, target: tuple[int, ...], target_name: str) -> None:
    """ValueError unless `t` broadcasts to the shape `target` (without growing `target`)."""
    try:
        shape = torch.broadcast_shapes(tuple(t.shape), target)
    except RuntimeError:
        shape = None
    if shape != tuple(target):
        raise ValueError(f"faircalib.kernels.{op}: {name} of shape {tuple(t.shape)} does not broadcast to the "
                         f"{target_name} shape {tuple(target)}; give it that shape or one of size-1 dims")
