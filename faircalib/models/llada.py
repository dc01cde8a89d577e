"""Native LLaDA (model_type "llada", class `LLaDAModelLM`), equivalent to the public remote-code model.

Module and parameter names equal the published checkpoints (`model.transformer.wte`,
`model.transformer.blocks.{i}.{attn_norm,q_proj,k_proj,v_proj,attn_out,ff_norm,ff_proj,up_proj,ff_out}`,
`model.transformer.ln_f`, LM head `model.transformer.ff_out`), so their safetensors load by name.

Forward pass, as in the public `LLaDALlamaBlock`: pre-norm RMSNorm (fp32, cast, then weight), q/k/v projections,
RoPE in fp32 (`rope_full_precision`), bidirectional SDPA with scale 1/sqrt(Dh), `attn_out`, residual; then
`ff_out(silu(ff_proj(x)) * up_proj(x))`, residual. Logits = `ff_out(ln_f(x))` over `embedding_size` rows (the
tied `wte` when `weight_tying`), times 1/sqrt(d_model) only with `scale_logits`.

One deliberate difference: the public code ignores `attention_mask` (it hard-codes `attn_mask=None`); here a
padding mask hides padded keys and numbers positions over real tokens only. Without padding both are identical.
Only the published variant is implemented (llama block, silu, RMSNorm, RoPE); other OLMo options are refused.
Dropout settings are not applied (the published configs set them to 0).
"""
import math

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from faircalib.models.base import BlockwiseLM, tied_weights_declaration
from faircalib.models.layers import RMSNorm, bidirectional_attention, swiglu_mlp

# Options of the OLMo-derived config that this implementation supports, with the only value it supports.
_REQUIRED_OPTIONS = {
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "rope": True,
    "alibi": False,
    "attention_layer_norm": False,
    "block_group_size": 1,
}


class LLaDAConfig(PretrainedConfig):
    """The keys of LLaDA's config.json. Sizes and options default to LLaDA-8B, token ids to None
    (configs/llada-8b.json has the published ones); unknown keys are kept as attributes."""

    model_type = "llada"

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int | None = None,
        mlp_ratio: int = 4,
        vocab_size: int = 126464,
        embedding_size: int | None = None,
        rope_theta: float = 500000.0,
        rope_full_precision: bool = True,
        rms_norm_eps: float = 1e-5,
        weight_tying: bool = False,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        bias_for_layer_norm: bool | None = None,
        input_emb_norm: bool = False,
        scale_logits: bool = False,
        multi_query_attention: bool | None = None,
        max_sequence_length: int = 4096,
        mask_token_id: int | None = None,
        init_std: float = 0.02,
        block_type: str = "llama",
        activation_type: str = "silu",
        layer_norm_type: str = "rms",
        layer_norm_with_affine: bool = True,
        rope: bool = True,
        alibi: bool = False,
        attention_layer_norm: bool = False,
        block_group_size: int = 1,
        **kwargs,
    ):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_ratio = mlp_ratio
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.rope_theta = rope_theta
        self.rope_full_precision = rope_full_precision
        self.rms_norm_eps = rms_norm_eps
        self.weight_tying = weight_tying
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.bias_for_layer_norm = bias_for_layer_norm
        self.input_emb_norm = input_emb_norm
        self.scale_logits = scale_logits
        self.multi_query_attention = multi_query_attention
        self.max_sequence_length = max_sequence_length
        self.mask_token_id = mask_token_id
        self.init_std = init_std
        self.block_type = block_type
        self.activation_type = activation_type
        self.layer_norm_type = layer_norm_type
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rope = rope
        self.alibi = alibi
        self.attention_layer_norm = attention_layer_norm
        self.block_group_size = block_group_size
        # transformers' own tying machinery reads tie_word_embeddings; LLaDA's switch is weight_tying.
        kwargs["tie_word_embeddings"] = weight_tying
        super().__init__(**kwargs)

    def kv_heads(self) -> int:
        """Effective KV head count (OLMo rule: n_kv_heads, else 1 for multi-query attention, else n_heads)."""
        if self.n_kv_heads is not None:
            return self.n_kv_heads
        return 1 if self.multi_query_attention else self.n_heads

    def mlp_width(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    def rows(self) -> int:
        """Rows of the embedding and of the logits (embedding_size, padded past vocab_size in the real model)."""
        return self.embedding_size or self.vocab_size

    def check_supported(self) -> None:
        """Raise, before any allocation, if the config asks for something this implementation does not do."""
        wrong = {k: getattr(self, k) for k, v in _REQUIRED_OPTIONS.items() if getattr(self, k) != v}
        if wrong:
            raise ValueError(
                f"faircalib.models.llada: unsupported LLaDA config options {wrong}; this implementation covers the "
                f"published architecture {_REQUIRED_OPTIONS}. Load other variants with trust_remote_code=True."
            )
        if self.d_model % self.n_heads or self.n_heads % self.kv_heads():
            raise ValueError(
                f"faircalib.models.llada: d_model={self.d_model} must be divisible by n_heads={self.n_heads}, and "
                f"n_heads by the KV head count {self.kv_heads()}; fix the config."
            )
        if self.rows() < self.vocab_size:
            raise ValueError(
                f"faircalib.models.llada: embedding_size={self.embedding_size} is smaller than vocab_size="
                f"{self.vocab_size}; set embedding_size >= vocab_size (or leave it null)."
            )


def _norm_bias(config: LLaDAConfig) -> bool:
    """OLMo rule: norms carry a bias when bias_for_layer_norm says so, else when include_bias does."""
    return config.include_bias if config.bias_for_layer_norm is None else config.bias_for_layer_norm


class LLaDABlock(nn.Module):
    """One LLaDA transformer block: hidden [B, L, d_model] -> [B, L, d_model]."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, width, head_dim = config.d_model, config.mlp_width(), config.d_model // config.n_heads
        kv_width = config.kv_heads() * head_dim
        qkv_bias = config.include_bias or config.include_qkv_bias
        norm_bias = _norm_bias(config)
        self.n_heads, self.n_kv_heads = config.n_heads, config.kv_heads()
        self.rope_in_fp32 = config.rope_full_precision
        self.attn_norm = RMSNorm(d, config.rms_norm_eps, bias=norm_bias)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv_width, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_norm = RMSNorm(d, config.rms_norm_eps, bias=norm_bias)
        self.ff_proj = nn.Linear(d, width, bias=config.include_bias)
        self.up_proj = nn.Linear(d, width, bias=config.include_bias)
        self.ff_out = nn.Linear(width, d, bias=config.include_bias)

    def forward(
        self,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.attn_norm(hidden)
        attended = bidirectional_attention(
            self.q_proj(x),
            self.k_proj(x),
            self.v_proj(x),
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            rope_in_fp32=self.rope_in_fp32,
        )
        hidden = hidden + self.attn_out(attended)
        x = self.ff_norm(hidden)
        return hidden + swiglu_mlp(self.ff_proj, self.up_proj, self.ff_out, x)


class LLaDAModel(nn.Module):
    """Holds `transformer` = {wte, blocks, ln_f, ff_out}, the published module tree under `model.`."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.rows(), config.d_model),
                "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
                "ln_f": RMSNorm(config.d_model, config.rms_norm_eps, bias=_norm_bias(config)),
                "ff_out": nn.Linear(
                    config.d_model, config.rows(), bias=config.include_bias and not config.weight_tying
                ),
            }
        )
        if config.weight_tying:
            # Tied checkpoints have no ff_out tensor; the head reuses wte's matrix (F.linear(x, wte.weight)).
            self.transformer.ff_out.weight = self.transformer.wte.weight


class LLaDAModelLM(BlockwiseLM, PreTrainedModel):
    """LLaDA masked-diffusion LM: input_ids [B, L] -> logits [B, L, rows] (no shift: position i predicts i)."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDABlock"]
    TIED_WEIGHTS = {"model.transformer.ff_out.weight": "model.transformer.wte.weight"}  # when weight_tying
    _tied_weights_keys = tied_weights_declaration(TIED_WEIGHTS)

    def __init__(self, config: LLaDAConfig):
        config.check_supported()
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    def rope_spec(self) -> tuple[int, float]:
        return self.config.d_model // self.config.n_heads, float(self.config.rope_theta)

    def init_std(self) -> float:
        return float(self.config.init_std)

    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] int -> hidden [B, L, d_model] in the embedding dtype."""
        hidden = self.model.transformer.wte(input_ids)
        return hidden * (self.config.d_model**0.5) if self.config.input_emb_norm else hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, d_model] -> logits [B, L, rows]."""
        logits = self.model.transformer.ff_out(self.model.transformer.ln_f(hidden))
        return logits * (1 / math.sqrt(self.config.d_model)) if self.config.scale_logits else logits

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out
