"""`DenoisingState`: the sequence being denoised, its commit record, and the one way samplers touch the model.

Every sampler step is `logits = state.logits_at(rows)` (one forward pass, two rows per sequence under guidance; the
logits of the masked positions `rows` only) followed by `state.commit(positions, tokens)`. Commits are irreversible:
a committed position is never masked again and its token never changes, which is what makes `Trajectory.state_before`
exact.

On a GPU a step waits for it once, at its start (for the count of the rows to read), and queues the rest, the
model's forward and the sampler's choices and commits, without waiting: the host then prepares a step while the GPU
runs the forward. So the NaN-logits and committed-position checks of a step's results are read in the next step's
read-back, or by `check()` when the sampler is done, and raise there, naming the step where it happened.
"""
from __future__ import annotations

import torch

from faircalib.diffusion.denoiser import Denoiser, places
from faircalib.diffusion.prompts import PromptBatch
from faircalib.diffusion.trajectory import Trajectory


class DenoisingState:
    """x: [B, L] int64 current tokens (L = P + gen_length); masked: [B, L] bool; commit_step: [B, L] int64."""

    def __init__(self, denoiser: Denoiser, prompt: PromptBatch, gen_length: int, *, cfg_scale=0.0, record=False):
        batch, self.prompt_len = prompt.ids.shape
        device = prompt.ids.device
        self.denoiser, self.cfg_scale, self.step = denoiser, cfg_scale, 0
        answer = torch.full((batch, gen_length), denoiser.mask_token_id, dtype=torch.long, device=device)
        self.x = torch.cat([prompt.ids, answer], dim=1)
        self.attention_mask = torch.cat([prompt.attention_mask, torch.ones_like(answer, dtype=torch.bool)], dim=1)
        self.prompt_tokens = self.attention_mask.clone()
        self.prompt_tokens[:, self.prompt_len:] = False
        self.masked = torch.zeros_like(self.x, dtype=torch.bool)
        self.masked[:, self.prompt_len:] = True
        self.commit_step = torch.full_like(self.x, -1)
        # Unpadded batches pass no mask at all, like the reference implementations (and faster attention).
        self._model_mask = self.attention_mask if prompt.padded else None
        self._stats = [] if record else None
        self._never = torch.full((1,), denoiser.mask_token_id, device=device)  # index_fill's index, made on the device
        self._read = None  # flat indices of the positions the last logits_at returned (`spread`)
        self._faults = []  # (step, what, int64 count on the device, 0 = fine): the checks not read yet (`check`)
        self._counted = None  # (rows, its count, the read count) of `count(rows)`, for the logits_at that follows

    def logits_at(self, rows: torch.Tensor) -> torch.Tensor:
        """Aligned logits [rows.sum(), V] of the current state at rows ([B, L] bool, masked positions only; row-major
        order), guided when cfg_scale > 0, the mask token excluded: committing the mask id would leave a position
        that looks masked but counts as committed. The model's LM head runs on the positions read (with record=True:
        every masked one, for the statistics), not on the prompt and committed ones (`Denoiser.logits_at`).

        The step's one wait for the GPU is here, before the forward: one read-back of the earlier steps' checks, this
        step's and the counts of the positions read (or none here, after `count(rows)`); their places then come
        without a wait (`faircalib.nonzero`)."""
        counted, self._counted = self._counted, None
        count, read_count = counted[1:] if counted is not None and counted[0] is rows else self._read_back(rows)
        read = rows if self._stats is None else self.masked
        if self._stats is None:
            self._read = places(rows, count)
        else:  # every masked position is read for the statistics; the rows' places among them pick what is returned
            masked_flat = places(self.masked, read_count)
            rows_among_masked = places(rows.flatten().index_select(0, masked_flat), count)
            self._read = masked_flat.index_select(0, rows_among_masked)
        if self.cfg_scale > 0:
            unconditional = self.x.masked_fill(self.prompt_tokens, self.denoiser.mask_token_id)
            mask = None if self._model_mask is None else self._model_mask.repeat(2, 1)
            both = self.denoiser.logits_at(torch.cat([self.x, unconditional]), mask, read.repeat(2, 1),
                                           count=2 * read_count)
            cond, uncond = both.chunk(2)
            logits = uncond + (self.cfg_scale + 1) * (cond - uncond)
        else:
            logits = self.denoiser.logits_at(self.x, self._model_mask, read, count=read_count)
        # any() then a 0-d cast: sum() would first cast all [n, V] flags to int64 (8 bytes each)
        self._faults.append((self.step, "nan", torch.isnan(logits).any().long()))
        logits = logits.index_fill(-1, self._never, float("-inf"))
        if self._stats is None:
            return logits
        self._stats.append(_masked_statistics(logits, masked_flat, self.x.shape))
        return logits.index_select(0, rows_among_masked)

    def count(self, rows: torch.Tensor) -> int:
        """rows.sum() ([B, L] bool, masked positions only), read back with the checks of the steps so far: a loop
        condition on the count (the threshold sampler's) waits for the GPU here, and `logits_at(rows)` of the same
        rows tensor then reads nothing more."""
        count, read_count = self._read_back(rows)
        self._counted = (rows, count, read_count)
        return count

    def _read_back(self, rows: torch.Tensor) -> tuple[int, int]:
        """(rows.sum(), the count of the positions read: rows, or every masked one with record=True) in one wait for
        the GPU, with the earlier steps' NaN and overwrite flags and this step's check that rows are all masked;
        raises what those found."""
        faults, self._faults = self._faults, []
        count = rows.sum()
        read_count = count if self._stats is None else self.masked.sum()
        # Every entry int64 (the flags as sums, or any() cast), so the stack needs no type promotion; one read-back
        *found, overlap, count, read_count = torch.stack(
            [*(flag for *_, flag in faults), (rows & ~self.masked).sum(), count, read_count]).tolist()
        self._raise_first(faults, found)
        if overlap:
            raise RuntimeError(f"diffusion.state: step {self.step} asked for the logits of committed positions; "
                               "a sampler bug")
        return count, read_count

    def spread(self, values: torch.Tensor, fill) -> torch.Tensor:
        """values [n] for the n positions the last `logits_at` returned (its row-major order) -> [B, L] of
        values.dtype holding them there and `fill` elsewhere (what `out[rows] = values` does, without the wait
        for the GPU that a boolean index costs)."""
        if self._read is None:
            raise RuntimeError("diffusion.state: spread() places the values of the rows logits_at read; call "
                               "logits_at first")
        return _placed(values, self._read, self.x.shape, fill)

    def commit(self, positions: torch.Tensor, tokens: torch.Tensor):
        """positions: [B, L] bool, a subset of the masked positions; tokens: [B, L] int64 (read at positions).
        Ends the current step."""
        self._faults.append((self.step, "overwrite", (positions & ~self.masked).sum()))
        self._counted = None
        self.x = torch.where(positions, tokens, self.x)
        self.masked = self.masked & ~positions  # out of place: callers may pass `state.masked` itself
        self.commit_step = torch.where(positions, self.step, self.commit_step)
        self.step += 1

    def check(self):
        """Raises what the steps so far found wrong (NaN logits, a commit over committed positions), earliest
        first; one wait for the GPU."""
        if not self._faults:
            return
        faults, self._faults = self._faults, []
        self._raise_first(faults, torch.stack([flag for *_, flag in faults]).tolist())

    def _raise_first(self, faults: list, found: list) -> None:
        """Raises the earliest of the (step, what, flag) `faults` whose flag was read back nonzero (`found`)."""
        for (step, what, _), hit in zip(faults, found):
            if not hit:
                continue
            if what == "nan":
                raise FloatingPointError(
                    f"diffusion.state: the model returned NaN logits at step {step} (input {tuple(self.x.shape)}); "
                    "check the weights and the quantization settings"
                )
            raise RuntimeError(f"diffusion.state: step {step} tried to overwrite committed positions; a sampler bug")

    def trajectory(self) -> Trajectory:
        """The run so far as a Trajectory (requires record=True)."""
        if self._stats is None:
            raise RuntimeError("diffusion.state: statistics were not recorded; create the state with record=True")
        self.check()
        stacked = {name: torch.stack([s[name] for s in self._stats]) for name in self._stats[0]}
        return Trajectory(
            prompt_len=self.prompt_len,
            mask_token_id=self.denoiser.mask_token_id,
            tokens=self.x.clone(),
            commit_step=self.commit_step.clone(),
            attention_mask=self.attention_mask.clone(),
            num_steps=self.step,
            **stacked,
        )


def _masked_statistics(masked_logits: torch.Tensor, masked_flat: torch.Tensor,
                       shape: torch.Size) -> dict[str, torch.Tensor]:
    """Teacher statistics at masked positions: their logits [n, V] and flat places [n] in a [B, L] `shape` -> top1
    [B, L] int64 (-1 elsewhere) and top1_prob / margin / entropy [B, L] float32 (NaN elsewhere)."""
    log_probs = torch.log_softmax(masked_logits.float(), dim=-1)
    probs = log_probs.exp()
    top2 = probs.topk(2, dim=-1).values
    entropy = -(probs * log_probs.clamp_min(torch.finfo(torch.float32).min)).sum(-1)
    nan = float("nan")
    return {"top1": _placed(masked_logits.argmax(-1), masked_flat, shape, -1),  # as the samplers pick: ties agree
            "top1_prob": _placed(top2[:, 0], masked_flat, shape, nan),
            "margin": _placed(top2[:, 0] - top2[:, 1], masked_flat, shape, nan),
            "entropy": _placed(entropy, masked_flat, shape, nan)}


def _placed(values: torch.Tensor, flat: torch.Tensor, shape: torch.Size, fill) -> torch.Tensor:
    """values [n] at the flat places `flat` of a `shape` tensor of values.dtype, `fill` elsewhere: an index_copy,
    where a boolean-index write would wait for the GPU."""
    out = torch.full((shape.numel(),), fill, dtype=values.dtype, device=values.device)
    return out.index_copy_(0, flat, values).view(shape)
