"""Native Dream (model_type "Dream", class `DreamModel`), equivalent to the public remote-code model.

Dream is Qwen2.5 run without a causal mask. Module and parameter names equal the published checkpoints
(`model.embed_tokens`, `model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}`, `model.norm`, `lm_head`): GQA, biases on q/k/v only, RMSNorm (fp32, cast, then
weight), RoPE with cos/sin cast to the activation dtype (Qwen2), bidirectional SDPA with scale 1/sqrt(Dh).

`forward` returns the published, *shifted* logits: index i holds the prediction for position i+1 (Dream's
generation code realigns them with `cat(logits[:, :1], logits[:, :-1])`); `faircalib.models.adapter` does that.
With padding, positions count real tokens only and padded keys are hidden (as Dream's generation code does; its
mask also blanks padded query rows, whose outputs are meaningless either way).
"""
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from faircalib.models.base import BlockwiseLM, tied_weights_declaration
from faircalib.models.layers import RMSNorm, bidirectional_attention, swiglu_mlp


class DreamConfig(PretrainedConfig):
    """The keys of Dream's config.json (Qwen2 keys plus mask_token_id). Sizes default to Dream-7B; token ids to
    None (configs/dream-7b.json has the published ones). `rope_scaling` stays in kwargs: transformers 5 turned it
    into a property."""

    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        rope_theta: float = 1000000.0,
        use_sliding_window: bool = False,
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.use_sliding_window = use_sliding_window
        self.mask_token_id = mask_token_id
        if "rope_scaling" in kwargs and kwargs["rope_scaling"] is None:
            del kwargs["rope_scaling"]  # the published null; passing it on only triggers a deprecation warning
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)

    def check_supported(self) -> None:
        """Raise, before any allocation, if the config asks for something this implementation does not do."""
        problems = []
        if self.hidden_act != "silu":
            problems.append(f"hidden_act={self.hidden_act!r} (only 'silu')")
        rope_scaling = getattr(self, "rope_scaling", None) or {}
        if rope_scaling.get("rope_type", rope_scaling.get("type", "default")) != "default":
            problems.append(f"rope_scaling={rope_scaling} (only plain RoPE)")
        if self.use_sliding_window:
            problems.append("use_sliding_window=True (Dream attends over the full sequence)")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"hidden_size={self.hidden_size}, num_attention_heads={self.num_attention_heads}, "
                f"num_key_value_heads={self.num_key_value_heads} (each must divide the one before)"
            )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            problems.append(f"pad_token_id={self.pad_token_id} outside the vocabulary of {self.vocab_size}")
        if problems:
            raise ValueError(
                "faircalib.models.dream: unsupported Dream config: " + "; ".join(problems) + ". Fix the config, or "
                "load other variants with trust_remote_code=True."
            )


class DreamAttention(nn.Module):
    """Qwen2 attention without the causal mask: hidden [B, L, D] -> [B, L, D]."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        d, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        head_dim = d // heads
        self.n_heads, self.n_kv_heads = heads, kv_heads
        self.q_proj = nn.Linear(d, heads * head_dim, bias=True)
        self.k_proj = nn.Linear(d, kv_heads * head_dim, bias=True)
        self.v_proj = nn.Linear(d, kv_heads * head_dim, bias=True)
        self.o_proj = nn.Linear(heads * head_dim, d, bias=False)

    def forward(
        self,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        attended = bidirectional_attention(
            self.q_proj(hidden),
            self.k_proj(hidden),
            self.v_proj(hidden),
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            rope_in_fp32=False,
        )
        return self.o_proj(attended)


class DreamMLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x)), [B, L, D] -> [B, L, D]."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        d, width = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, width, bias=False)
        self.up_proj = nn.Linear(d, width, bias=False)
        self.down_proj = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu_mlp(self.gate_proj, self.up_proj, self.down_proj, x)


class DreamDecoderLayer(nn.Module):
    """One Dream block: hidden [B, L, D] -> [B, L, D] (pre-norm attention, then pre-norm MLP, both residual)."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(
        self,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), position_embeddings, attention_mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DreamBaseModel(nn.Module):
    """Holds embed_tokens, layers and norm, the published module tree under `model.`."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DreamModel(BlockwiseLM, PreTrainedModel):
    """Dream masked-diffusion LM: input_ids [B, L] -> logits [B, L, vocab], shifted (index i predicts i+1)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    TIED_WEIGHTS = {"lm_head.weight": "model.embed_tokens.weight"}  # when tie_word_embeddings
    _tied_weights_keys = tied_weights_declaration(TIED_WEIGHTS)

    def __init__(self, config: DreamConfig):
        config.check_supported()
        super().__init__(config)
        self.model = DreamBaseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.post_init()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def rope_spec(self) -> tuple[int, float]:
        return self.config.hidden_size // self.config.num_attention_heads, float(self.config.rope_theta)

    def init_std(self) -> float:
        return float(self.config.initializer_range)

    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] int -> hidden [B, L, hidden_size] in the embedding dtype."""
        return self.model.embed_tokens(input_ids)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, L, hidden_size] -> raw (shifted) logits [B, L, vocab_size]."""
        return self.lm_head(self.model.norm(hidden))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head
