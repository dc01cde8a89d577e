"""`Denoiser`: the little a sampler needs from a model, so samplers never depend on model internals.

A model (through its adapter), an adapter, or a plain `logits_fn(input_ids, attention_mask)` all become one.
The logits are *aligned* (index i predicts position i): Dream's one-position shift is the adapter's business,
and no sampler shifts again. Samplers read the logits of the rows they decide on (`Denoiser.logits_at`: the masked
positions); a model's adapter runs its LM head on those rows only, a plain logits function computes every row.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from faircalib.nonzero import nonzero_known

LogitsFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
RowsLogitsFn = Callable[..., torch.Tensor]  # (input_ids, attention_mask, rows, *, count) -> logits


@dataclass(frozen=True)
class Denoiser:
    """logits_fn: (input_ids [B, L] int64, attention_mask [B, L] bool | None) -> aligned logits [B, L, V].

    mask_token_id: id of the mask token. max_length: the model's context length (None = unbounded).
    device: where the model's inputs must live (None = wherever the prompts are). vocab_size: the token ids the
    model embeds, [0, vocab_size) (None = not known; prompts are then only checked for negative ids).
    rows_fn: (input_ids, attention_mask, rows [B, L] bool, count=rows.sum() as an int) -> the aligned logits at rows
    [count, V], computing only those (an adapter's `logits_at`); None: `logits_fn`'s output indexed by rows. A
    rows_fn without a `count` parameter (an adapter written before it existed) is called without it.
    """

    logits_fn: LogitsFn
    mask_token_id: int
    max_length: int | None = None
    device: torch.device | None = None
    rows_fn: RowsLogitsFn | None = None
    vocab_size: int | None = None

    def __post_init__(self):
        if self.rows_fn is not None and not _takes_count(self.rows_fn):
            rows_fn = self.rows_fn
            object.__setattr__(self, "rows_fn", lambda input_ids, mask, rows, count: rows_fn(input_ids, mask, rows))

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        logits = self.logits_fn(input_ids, attention_mask)
        batch, length = input_ids.shape
        if logits.dim() != 3 or logits.shape[:2] != (batch, length):
            raise ValueError(
                f"diffusion.denoiser: the model returned logits of shape {tuple(logits.shape)} for input_ids "
                f"{(batch, length)}; it must return aligned logits [B, L, V]"
            )
        return self._checked_vocabulary(logits)

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  rows: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """The aligned logits at rows ([B, L] bool), [rows.sum(), V] in row-major order. count: rows.sum() where the
        caller has read it already; otherwise it is read here, a wait for the GPU. That wait, and what else needs
        the rows' places, runs before the model call, so nothing after the call waits for it."""
        if rows.shape != input_ids.shape or rows.dtype != torch.bool:
            raise ValueError(f"diffusion.denoiser: rows must be a bool mask of the input's shape "
                             f"{tuple(input_ids.shape)}, got {rows.dtype} {tuple(rows.shape)}")
        count = int(rows.sum()) if count is None else count
        if self.rows_fn is None:
            return self.logits(input_ids, attention_mask).flatten(0, 1).index_select(0, places(rows, count))
        logits = self.rows_fn(input_ids, attention_mask, rows, count=count)
        if logits.dim() != 2 or logits.shape[0] != count:
            raise ValueError(
                f"diffusion.denoiser: the model returned logits of shape {tuple(logits.shape)} for {count} selected "
                f"positions; it must return [{count}, V]"
            )
        return self._checked_vocabulary(logits)

    def _checked_vocabulary(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] <= self.mask_token_id:
            raise ValueError(
                f"diffusion.denoiser: mask_token_id={self.mask_token_id} is outside the vocabulary of "
                f"{logits.shape[-1]} logits; pass the mask id of this model"
            )
        return logits


def places(mask: torch.Tensor, count: int) -> torch.Tensor:
    """The flat places [count] of mask's True entries (row-major), their count known: `nonzero` without its wait for
    the GPU."""
    return nonzero_known(mask.flatten(), count).squeeze(1)


def _takes_count(fn) -> bool:
    """Whether fn accepts a `count` keyword (or any keyword)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): assume the current contract
        return True
    return any(p.name == "count" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def as_denoiser(model, *, mask_token_id: int | None = None, max_length: int | None = None) -> Denoiser:
    """`model`: a Denoiser, an `nn.Module` (wrapped by `faircalib.models.get_adapter`), an adapter (an object
    with `.logits` and `.mask_token_id`), or a logits function (then `mask_token_id` is required).
    Explicit `mask_token_id` / `max_length` override what the model says."""
    if isinstance(model, Denoiser):
        return model
    if isinstance(model, torch.nn.Module):
        from faircalib.models import get_adapter  # models import diffusion-free code only; import when needed

        adapter, module = get_adapter(model), model
    elif hasattr(model, "logits") and hasattr(model, "mask_token_id"):
        adapter, module = model, getattr(model, "model", None)
    elif callable(model):
        adapter, module = None, None
    else:
        raise TypeError(
            f"diffusion.denoiser: cannot generate with a {type(model).__name__}; pass a model (a name or path loads "
            "with faircalib.models.load_model), an adapter or a logits function (input_ids, attention_mask) -> "
            "logits [B, L, V]"
        )
    if mask_token_id is None and adapter is not None:
        mask_token_id = adapter.mask_token_id
    if mask_token_id is None:
        raise ValueError(
            f"diffusion.denoiser: {type(model).__name__} has no mask token, so it cannot denoise; pass "
            "mask_token_id=... (or set mask_token_id in the model config)"
        )
    config = getattr(module, "config", None)
    if max_length is None and config is not None:
        max_length = getattr(config, "max_sequence_length", None) or getattr(config, "max_position_embeddings", None)
    parameter = next(module.parameters(), None) if isinstance(module, torch.nn.Module) else None
    embeddings = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    vocab_size = getattr(embeddings, "num_embeddings", None) or getattr(config, "vocab_size", None)
    logits_fn = adapter.logits if adapter is not None else model
    rows_fn = getattr(adapter, "logits_at", None)
    return Denoiser(logits_fn, int(mask_token_id), max_length, None if parameter is None else parameter.device,
                    rows_fn, vocab_size)
