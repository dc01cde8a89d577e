"""What the native LLaDA and Dream models share: the block-by-block forward pass.

A model is `embed_inputs -> blocks -> head`, and every block is called the same way,
`block(hidden [B, L, D], **block_kwargs) -> hidden`, so calibration can run (and replace) one block at a time.
`head` returns the model's *raw* logits (Dream's are shifted by one position, as published); the adapter aligns
them.
"""
import torch
import transformers
from transformers.modeling_outputs import MaskedLMOutput

from faircalib.models.rope import positions_from_padding, rotary_cos_sin
from faircalib.models.weight_init import init_module_


class BlockwiseLM:
    """Mixin for a `PreTrainedModel` that defines `blocks`, `embed_inputs`, `head`, `rope_spec` and `init_std`."""

    def rope_spec(self) -> tuple[int, float]:
        """-> (head_dim, rope_theta)."""
        raise NotImplementedError

    def init_std(self) -> float:
        """Standard deviation of fresh linear/embedding weights (from the family's config)."""
        raise NotImplementedError

    def tied_weights(self) -> dict[str, str]:
        """{parameter name not stored in checkpoints: the stored parameter it shares}; empty when untied."""
        return dict(self.TIED_WEIGHTS) if self.config.tie_word_embeddings else {}

    def retie_(self) -> None:
        """Share tied parameters again after `to_empty` or `load_state_dict(assign=True)` split them."""
        for target, source in self.tied_weights().items():
            owner, _, leaf = target.rpartition(".")
            setattr(self.get_submodule(owner), leaf, self.get_parameter(source))

    def initialize_(self, generator: torch.Generator) -> None:
        """Fresh weights for every module, drawn from `generator` (which must live on the weights' device)."""
        for module in self.modules():
            init_module_(module, self.init_std(), generator)

    def _init_weights(self, module: torch.nn.Module) -> None:
        # The transformers hook (from_config / post_init in 4.x) initialises module by module.
        init_module_(module, self.init_std())

    def block_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        """See `rotary_block_kwargs`."""
        return rotary_block_kwargs(type(self).__name__, input_ids, attention_mask, *self.rope_spec())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> MaskedLMOutput:
        """input_ids: [B, L] int -> MaskedLMOutput(logits [B, L, V]) with the family's raw (published) alignment."""
        kwargs = self.block_kwargs(input_ids, attention_mask)
        hidden = self.embed_inputs(input_ids)
        for block in self.blocks:
            hidden = block(hidden, **kwargs)
        return MaskedLMOutput(logits=self.head(hidden))


def tied_weights_declaration(tied: dict[str, str]) -> dict[str, str] | list[str]:
    """`_tied_weights_keys` for transformers' own loading (from_pretrained): a {target: source} dict since
    transformers 5, a list of targets before. Without it a tied checkpoint (no head tensor) loads with the head
    "missing" and re-initialised, which overwrites the shared embedding."""
    return tied if int(transformers.__version__.split(".")[0]) >= 5 else list(tied)


def rotary_block_kwargs(
    owner: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, head_dim: int, theta: float
) -> dict:
    """input_ids: [B, L] int; attention_mask: [B, L] (1 = token, 0 = padding) or None ->
    {"position_embeddings": (cos, sin) [B|1, L, Dh] fp32, "attention_mask": bool [B, 1, 1, L] or None}.
    `owner` names the caller in errors."""
    check_input_ids(owner, input_ids)
    key_mask = None
    # An all-ones mask takes the unmasked path (faster attention), found by reading the mask on the host: a CUDA graph
    # capture forbids that (GraphedLogits would fall back to eager), and there the masked path serves any mask
    if attention_mask is None or (not capturing_cuda_graph() and bool(attention_mask.bool().all())):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"{owner}: attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                f"{tuple(input_ids.shape)}; pass a [B, L] mask with 1 for tokens and 0 for padding."
            )
        positions = positions_from_padding(attention_mask)
        key_mask = attention_mask.bool()[:, None, None, :]
    cos, sin = rotary_cos_sin(positions, head_dim, theta)
    return {"position_embeddings": (cos, sin), "attention_mask": key_mask}


def capturing_cuda_graph() -> bool:
    """Whether the current CUDA stream is being captured into a graph (no host reads of device values allowed)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def check_input_ids(owner: str, input_ids: torch.Tensor) -> None:
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(
            f"{owner}: input_ids must be an integer tensor [B, L], got {input_ids.dtype} of shape "
            f"{tuple(input_ids.shape)}; add a batch axis with input_ids[None] for a single sequence."
        )
