"""Calibration sequences for Stage II: fully observed text, one row per sequence.

Task problems become `prompt + answer + eos fill`, left-padded so that every answer region is the trailing
`gen_length` positions: the FAIR prior's trailing window then lands on the answer in every row. (RoPE is
relative, so left padding that the attention mask hides changes nothing for the real tokens.)
"""
from __future__ import annotations

import torch

from faircalib.zoo.tasks import Problem


def task_sequences(tokenizer, problems: list[Problem], gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """problems → (input_ids [N, P + gen_length] int64, attention_mask [N, P + gen_length] bool), left-padded."""
    if not problems:
        raise ValueError("calib.data: no calibration problems; ask for at least one (--n-calib)")
    rows = []
    for p in problems:
        answer = tokenizer.encode(p.answer)
        if len(answer) > gen_length:
            raise ValueError(f"calib.data: answer {p.answer!r} is longer than gen_length={gen_length}")
        rows.append(tokenizer.encode(p.prompt) + answer + [tokenizer.eos_token_id] * (gen_length - len(answer)))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = True
    return ids, mask


def text_sequences(token_ids: torch.Tensor, seq_len: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A long tokenised text [T] → n random windows [n, seq_len] (FlatQuant's WikiText-2 sampling)."""
    if seq_len < 1 or n < 1:
        raise ValueError(f"calib.data: seq_len={seq_len} and n={n} windows must both be >= 1")
    if token_ids.numel() <= seq_len:
        raise ValueError(f"calib.data: the calibration text has {token_ids.numel()} tokens; need more than "
                         f"seq_len={seq_len}")
    starts = torch.randint(0, token_ids.numel() - seq_len, (n,), generator=generator)
    return torch.stack([token_ids[s:s + seq_len] for s in starts.tolist()])
