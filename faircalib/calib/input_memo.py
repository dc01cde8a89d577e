"""One computation per shared input: linears that read the same tensor get one transformed, quantized input.

FlatQuant has one activation quantizer per linear input: q/k/v read one input, gate/up another, and that input is
transformed and quantized once. `InputMemo` is what the readers of one input share (the calibrated `QuantLinear`s
of an input group, and the deployed `W4A4Linear`s linked by `share_input_quantization`): the first reader computes,
the others get the same result.

`get(member, x, key, compute)` returns `compute()` unless the memo holds a result for this very input:
- the same tensor object (`x is` the stored one; the memo keeps a strong reference, so an id cannot be recycled),
- not modified in place since (`x._version`),
- under the same grad mode and autocast state,
- with an equal `key` (what else the result depends on: tensors are compared by identity and `_version`, so a
  parameter stepped by the optimizer or a buffer replaced by `.to()` is a miss; other values by `==`).
The stored result is released once every member has read it, so it does not outlive one forward pass.
Not memoized (computed every time): inference tensors (`torch.inference_mode`; they keep no version counter, so an
in-place change could not be seen) and code traced by `torch.compile`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def _autocast_state(device_type: str) -> tuple:
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # a device type autocast does not know
        return (device_type, False, None)
    return (device_type, enabled, torch.get_autocast_dtype(device_type) if enabled else None)


class _Seen:
    """A tensor as a key part: equal to another only for the same tensor object at the same `_version`."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor):
        self.tensor, self.version = tensor, tensor._version

    def __eq__(self, other) -> bool:
        return isinstance(other, _Seen) and self.tensor is other.tensor and self.version == other.version

    __hash__ = None


def _frozen(key: tuple) -> tuple:
    return tuple(_Seen(v) if isinstance(v, torch.Tensor) else v for v in key)


class _Entry:
    __slots__ = ("x", "state", "value", "readers")

    def __init__(self, x: torch.Tensor, state: tuple, value: Any, reader: int):
        self.x, self.state, self.value, self.readers = x, state, value, {reader}


class InputMemo:
    """The last result computed from one shared input (module doc). Members `join()` to get their slot."""

    def __init__(self) -> None:
        self.size = 0
        self._entry: _Entry | None = None

    def join(self) -> int:
        """Register one more reader; returns its slot (the `member` argument of `get`)."""
        self.size += 1
        return self.size - 1

    def clear(self) -> None:
        self._entry = None

    def memoizes(self, x: torch.Tensor, key: tuple) -> bool:
        """Whether `get` may store (and reuse) a result for this input and key (module doc)."""
        return not (self.size < 2 or x.is_inference() or torch.compiler.is_compiling() or
                    any(isinstance(v, torch.Tensor) and v.is_inference() for v in key))

    def get(self, member: int, x: torch.Tensor, key: tuple, compute: Callable[[], Any]) -> Any:
        if not self.memoizes(x, key):
            return compute()
        state = (x._version, torch.is_grad_enabled(), _autocast_state(x.device.type), *_frozen(key))
        entry = self._entry
        if entry is not None and entry.x is x and entry.state == state:
            entry.readers.add(member)
            if len(entry.readers) >= self.size:
                self._entry = None  # every reader has it: do not keep the input and result alive
            return entry.value
        self._entry = None  # release the old input before computing the new result
        value = compute()
        self._entry = _Entry(x, state, value, member)
        return value

    def __getstate__(self) -> dict:
        # Copies (deepcopy, pickling) never carry a stored input: it belongs to one forward pass of the original.
        return {"size": self.size, "_entry": None}

    def __repr__(self) -> str:
        return f"InputMemo(members={self.size})"
