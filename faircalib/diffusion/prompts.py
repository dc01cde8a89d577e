"""Prompt batches: every accepted input form becomes one left-padded `[B, P]` batch with an attention mask.

Left padding puts the answer region of every row at the same columns `P .. P+gen_length`, which is what both
LLaDA's and Dream's batched generation expect; padded positions are hidden from the model by the attention mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class PromptBatch:
    """ids: [B, P] int64, left-padded. attention_mask: [B, P] bool, False on padding."""

    ids: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def padded(self) -> bool:
        return not bool(self.attention_mask.all())


def prompt_batch(prompts, *, attention_mask=None, pad_token_id: int | None = None,
                 width_multiple: int = 1) -> PromptBatch:
    """Normalises `prompts` to a left-padded batch.

    prompts: a [B, P] int tensor (left- or right-padded: padding is `attention_mask == 0`, or ids equal to
    `pad_token_id` when no mask is given, or none at all), a 1-D tensor (one prompt), or a sequence of 1-D
    prompts (lists or tensors) of different lengths. width_multiple: more padding on the left, up to a width that
    is a multiple of it (batches of nearby prompt lengths then share a shape: one CUDA graph, one compilation).
    """
    if width_multiple < 1:
        raise ValueError(f"diffusion.prompts: width_multiple must be at least 1, got {width_multiple}")
    pad = 0 if pad_token_id is None else pad_token_id
    if torch.is_tensor(prompts):
        ids = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
        if ids.dim() != 2 or not _holds_integers(ids):
            raise ValueError(
                f"diffusion.prompts: prompt_ids must be integer token ids of shape [B, P] or [P], got "
                f"{tuple(prompts.shape)} {prompts.dtype}"
            )
        batch = _left_align(ids.long(), _mask_of(ids, attention_mask, pad_token_id))
    elif attention_mask is not None:
        raise ValueError("diffusion.prompts: attention_mask is only accepted with a [B, P] tensor of prompts")
    else:
        batch = _from_sequences(prompts, pad)
    extra = -batch.ids.shape[1] % width_multiple
    if not extra:
        return batch
    return PromptBatch(torch.nn.functional.pad(batch.ids, (extra, 0), value=pad),
                       torch.nn.functional.pad(batch.attention_mask, (extra, 0), value=False))


def _mask_of(ids: torch.Tensor, attention_mask, pad_token_id) -> torch.Tensor:
    if attention_mask is not None:
        mask = attention_mask.unsqueeze(0) if attention_mask.dim() == 1 else attention_mask
        if mask.shape != ids.shape:
            raise ValueError(
                f"diffusion.prompts: attention_mask has shape {tuple(attention_mask.shape)} but prompt_ids has "
                f"{tuple(ids.shape)}; give one mask entry per prompt token"
            )
        return mask.to(device=ids.device, dtype=torch.bool)
    if pad_token_id is not None:
        return ids != pad_token_id
    return torch.ones_like(ids, dtype=torch.bool)


def _left_align(ids: torch.Tensor, mask: torch.Tensor) -> PromptBatch:
    """Moves each row's (contiguous) valid tokens to the right end."""
    if ids.shape[1] == 0:  # empty prompts: unconditional generation
        return PromptBatch(ids, mask)
    count = mask.sum(1)
    columns = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    first = torch.where(mask, columns, ids.shape[1]).min(1).values
    last = torch.where(mask, columns, -1).max(1).values
    holes = (count > 0) & (last - first + 1 != count)
    if holes.any():
        row = int(holes.nonzero()[0, 0])
        raise ValueError(
            f"diffusion.prompts: row {row} of the [B, P] = {tuple(ids.shape)} prompt batch has padding between "
            "its tokens; pad only on the left or only on the right"
        )
    # A stable sort of the mask puts padding (False) first and keeps the token order.
    order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
    return PromptBatch(ids.gather(1, order), mask.gather(1, order))


def _from_sequences(prompts: Sequence, pad_token_id: int) -> PromptBatch:
    rows = [torch.as_tensor(p) for p in prompts]
    if not rows or any(r.dim() != 1 for r in rows):
        raise ValueError(
            "diffusion.prompts: give a non-empty sequence of 1-D prompts (lists of ids or 1-D tensors), got "
            f"shapes {[tuple(r.shape) for r in rows]}"
        )
    # A float id would be truncated without a word by a cast; an empty list is a float tensor, and fine.
    wrong = [i for i, r in enumerate(rows) if r.numel() and not _holds_integers(r)]
    if wrong:
        raise ValueError(f"diffusion.prompts: prompt {wrong[0]} holds {rows[wrong[0]].dtype} values; prompts are "
                         f"integer token ids")
    rows = [r.long() for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=rows[0].device)
    mask = torch.zeros(len(rows), width, dtype=torch.bool, device=rows[0].device)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = True
    return PromptBatch(ids, mask)


def _holds_integers(t: torch.Tensor) -> bool:
    """Whether `t` holds integer ids: casting float (or bool) values to ids would change them without a word."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
