"""`Trajectory`: the one record of a denoising run, read by generation, the Stage I probe and every metric.

Committed tokens never change, so a run is fully described by the final `tokens` and the step at which each
position was committed: the state the model saw before step t is `tokens` where `commit_step < t` and the mask
token elsewhere. Per-step teacher statistics are kept for the positions that were masked at that step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from faircalib import atomic

STAT_FIELDS = ("top1", "top1_prob", "margin", "entropy")


@dataclass
class Trajectory:
    """Batch-first record of one run over sequences of length L = prompt_len + gen_length.

    prompt_len: width of the (left-padded) prompt region. mask_token_id: the id a masked position holds.
    tokens: [B, L] int64 final sequences. commit_step: [B, L] int64, the step committing each position, -1 for
    prompt and padding. attention_mask: [B, L] bool, False on left padding (what the model was given).
    num_steps: S, the number of forward steps taken.
    Per step s and position i still masked before step s (from the logits the sampler saw, after guidance):
    top1 [S, B, L] int64 (argmax; -1 where not masked), top1_prob / margin (top-1 minus top-2 probability) /
    entropy (nats) [S, B, L] float32 (NaN where not masked).
    """

    prompt_len: int
    mask_token_id: int
    tokens: torch.Tensor
    commit_step: torch.Tensor
    attention_mask: torch.Tensor
    num_steps: int
    top1: torch.Tensor
    top1_prob: torch.Tensor
    margin: torch.Tensor
    entropy: torch.Tensor

    @property
    def gen_length(self) -> int:
        return self.tokens.shape[1] - self.prompt_len

    def state_before(self, t: int) -> torch.Tensor:
        """[B, L] int64: the input of step t (0 <= t <= num_steps; t = num_steps gives the final tokens)."""
        self._check_step(t, self.num_steps)
        visible = self.commit_step < t
        return torch.where(visible, self.tokens, torch.full_like(self.tokens, self.mask_token_id))

    def masked_before(self, t: int) -> torch.Tensor:
        """[B, L] bool: positions still masked in the input of step t."""
        self._check_step(t, self.num_steps)
        return self.commit_step >= t

    def committed_at(self, t: int) -> torch.Tensor:
        """[B, L] bool: positions committed by step t (the write frontier C_t)."""
        self._check_step(t, self.num_steps - 1)
        return self.commit_step == t

    def _check_step(self, t: int, last: int):
        if not 0 <= t <= last:
            raise IndexError(f"diffusion.trajectory: step {t} is outside 0..{last} of a {self.num_steps}-step run")

    def save(self, path) -> Path:
        """Writes a `.pt` (torch) or `.npz` (numpy) file, chosen by the suffix."""
        path = Path(path)
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        if path.suffix == ".pt":
            atomic.write_file(path, lambda tmp: torch.save(payload, tmp))
        elif path.suffix == ".npz":
            arrays = {k: v.cpu().numpy() if torch.is_tensor(v) else v for k, v in payload.items()}
            atomic.write_file(path, lambda tmp: np.savez_compressed(tmp, **arrays))
        else:
            raise ValueError(f"diffusion.trajectory: cannot save to {path}; use a .pt or .npz file name")
        return path

    @classmethod
    def load(cls, path) -> "Trajectory":
        path = Path(path)
        if path.suffix == ".pt":
            payload = torch.load(path, weights_only=True)
        elif path.suffix == ".npz":
            with np.load(path) as data:
                payload = {k: torch.from_numpy(data[k]) if data[k].ndim else data[k].item() for k in data.files}
        else:
            raise ValueError(f"diffusion.trajectory: cannot load {path}; expected a .pt or .npz file")
        return cls(**payload)
