"""`generate`: the one entry point to every diffusion sampler."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.denoiser import as_denoiser
from faircalib.diffusion.dream import sample_dream
from faircalib.diffusion.llada import sample_blockwise
from faircalib.diffusion.prompts import PromptBatch, prompt_batch
from faircalib.diffusion.state import DenoisingState
from faircalib.diffusion.trajectory import Trajectory


@dataclass(frozen=True)
class GenerationOutput:
    """tokens: [B, P + gen_length] int64, prompts left-padded to width P = prompt_len. trajectory: the full
    record when `record=True`, else None. num_steps: the denoising steps run, one forward pass each (the threshold
    sampler's count depends on the model). Unpacks as `tokens, trajectory = generate(...)`."""

    tokens: torch.Tensor
    trajectory: Trajectory | None
    prompt_len: int
    num_steps: int

    @property
    def answer(self) -> torch.Tensor:
        """[B, gen_length] int64: the generated tokens."""
        return self.tokens[:, self.prompt_len:]

    def __iter__(self):
        return iter((self.tokens, self.trajectory))


@torch.no_grad()
def generate(
    model,
    prompt_ids,
    config: SamplerConfig | None = None,
    *,
    generator: torch.Generator | None = None,
    record: bool = False,
    attention_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    mask_token_id: int | None = None,
) -> GenerationOutput:
    """Generates `config.gen_length` tokens after each prompt.

    model: a model (through `faircalib.models.get_adapter`), an adapter, a `Denoiser`, or a logits function
    `(input_ids [B, L], attention_mask [B, L] bool | None) -> aligned logits [B, L, V]` with `mask_token_id`.
    prompt_ids: [B, P] int tensor (left- or right-padded; padding given by `attention_mask`, else by
    `pad_token_id`), a 1-D tensor, or a list of 1-D prompts of different lengths; moved to the model's device.
    Padded rows give the same result as the row alone (the model must hide padding through the attention mask).
    generator: all randomness (Gumbel noise, random orders); None draws a fresh nondeterministic seed.
    """
    config = SamplerConfig() if config is None else config
    denoiser = as_denoiser(model, mask_token_id=mask_token_id)
    prompts = prompt_batch(prompt_ids, attention_mask=attention_mask, pad_token_id=pad_token_id)
    _check_token_ids(prompts, denoiser.vocab_size)
    if denoiser.device is not None:
        prompts = PromptBatch(prompts.ids.to(denoiser.device), prompts.attention_mask.to(denoiser.device))
    total = prompts.ids.shape[1] + config.gen_length
    if denoiser.max_length is not None and total > denoiser.max_length:
        raise ValueError(
            f"diffusion.generate: prompt length {prompts.ids.shape[1]} + gen_length {config.gen_length} = {total} "
            f"exceeds the model context of {denoiser.max_length} tokens; shorten the prompt or gen_length"
        )
    if generator is None:
        generator = torch.Generator(prompts.ids.device)
        generator.seed()
    state = DenoisingState(denoiser, prompts, config.gen_length, cfg_scale=config.cfg_scale, record=record)
    if config.sampler == "dream":
        sample_dream(state, config, generator)
    else:
        sample_blockwise(state, config, generator)
    state.check()
    return GenerationOutput(state.x, state.trajectory() if record else None, state.prompt_len, state.step)


def _check_token_ids(prompts: PromptBatch, vocab_size: int | None) -> None:
    """Prompt ids outside the model's vocabulary fail here, named, rather than as an IndexError inside the
    embedding (or, on a GPU, a device-side assert that ends the process). Padding too: the model embeds it."""
    if prompts.ids.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(prompts.ids))
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        vocabulary = f"[0, {vocab_size})" if vocab_size is not None else "[0, vocab_size)"
        raise ValueError(f"diffusion.generate: prompt token ids (padding included) must lie in the model's "
                         f"vocabulary {vocabulary}, got ids from {low} to {high}; encode the prompts with this "
                         f"model's tokenizer, and pad with its pad id")
