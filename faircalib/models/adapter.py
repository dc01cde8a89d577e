"""One adapter for both families: where the blocks, linears, norms and head are, and how to run them.

Everything model-specific that calibration, samplers and metrics need lives in a `Layout` (module paths as in
the published checkpoints) plus one flag, `shift_logits`. The layout is detected from module names, so native
models and remote-code models that follow one of the two layouts go through the same code.

LLaDA names its LM head `ff_out` like every block's down projection; the adapter only ever resolves paths from
the model root (`model.transformer.ff_out`) or from a block (`ff_out`), never by leaf name, so the two cannot be
confused.
"""
from dataclasses import dataclass

import torch
from torch import nn

from faircalib.models.base import BlockwiseLM
from faircalib.nonzero import nonzero_known

ROLES = ("q", "k", "v", "o", "gate", "up", "down")
# Linears that read the same input (FlatQuant's P_a, P_o, P_ug, P_d): they share one input transform and one
# activation quantizer, in calibration and in deployment.
INPUT_GROUPS = {"attn_in": ("q", "k", "v"), "o_in": ("o",), "mlp_in": ("gate", "up"), "down_in": ("down",)}


@dataclass(frozen=True)
class Layout:
    """Module paths of one family. `linears`/`norms` are relative to a block, the rest to the model root."""

    family: str
    blocks: str
    linears: dict[str, str]
    norms: tuple[str, str]
    embed: str
    final_norm: str
    lm_head: str
    shift_logits: bool


LLADA = Layout(
    family="llada",
    blocks="model.transformer.blocks",
    linears={"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out", "gate": "ff_proj", "up": "up_proj",
             "down": "ff_out"},
    norms=("attn_norm", "ff_norm"),
    embed="model.transformer.wte",
    final_norm="model.transformer.ln_f",
    lm_head="model.transformer.ff_out",
    shift_logits=False,
)

DREAM = Layout(
    family="dream",
    blocks="model.layers",
    linears={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
    norms=("input_layernorm", "post_attention_layernorm"),
    embed="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    shift_logits=True,
)

LAYOUTS = (LLADA, DREAM)


def align_logits(logits: torch.Tensor, shift: bool) -> torch.Tensor:
    """Raw logits [B, L, V] -> aligned (index i predicts position i). Dream's raw index i predicts i+1, so the
    prediction for i comes from i-1 and position 0 keeps its own, exactly as Dream's generation code does."""
    return torch.cat((logits[:, :1], logits[:, :-1]), dim=1) if shift else logits


class Adapter:
    """Uniform access to a LLaDA- or Dream-layout model (see docs/design.md, "Models")."""

    def __init__(self, model: nn.Module, layout: Layout, runner):
        """`runner` provides blocks, embed_inputs, block_kwargs and (raw) head: the native model itself, or a
        faircalib.models.remote.RemoteRunner."""
        self.model = model
        self.layout = layout
        self.runner = runner
        self.blocks: list[nn.Module] = list(runner.blocks)
        self.embed: nn.Module = model.get_submodule(layout.embed)
        self.final_norm: nn.Module = model.get_submodule(layout.final_norm)
        # A remote-code LLaDA with weight_tying has no ff_out module: its head is the embedding matrix.
        names = {name for name, _ in model.named_modules()}
        self.lm_head: nn.Module = model.get_submodule(layout.lm_head) if layout.lm_head in names else self.embed
        self.shift_logits: bool = layout.shift_logits
        self.mask_token_id: int | None = getattr(model.config, "mask_token_id", None)

    @property
    def family(self) -> str:
        return self.layout.family

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """block -> {role: its linear module} for roles q k v o gate up down."""
        block = _unwrap(block)
        return {role: block.get_submodule(path) for role, path in self.layout.linears.items()}

    def input_groups(self, block: nn.Module) -> dict[str, dict[str, nn.Module]]:
        """block -> {input group: {role: linear}} (INPUT_GROUPS: the linears of a group read the same input)."""
        linears = self.linears(block)
        return {group: {role: linears[role] for role in roles} for group, roles in INPUT_GROUPS.items()}

    def set_linear(self, block: nn.Module, role: str, module: nn.Module) -> None:
        """Replace the linear of `role` inside `block` (e.g. by a quantized linear)."""
        if role not in self.layout.linears:
            raise KeyError(f"faircalib.models.adapter: unknown role {role!r}; roles are {ROLES}")
        owner, _, leaf = self.layout.linears[role].rpartition(".")
        block = _unwrap(block)
        setattr(block.get_submodule(owner) if owner else block, leaf, module)

    def linear_name(self, block_index: int, role: str) -> str:
        """Checkpoint name of a block's linear, e.g. (3, "down") -> "model.transformer.blocks.3.ff_out"."""
        return f"{self.layout.blocks}.{block_index}.{self.layout.linears[role]}"

    def norms(self, block: nn.Module) -> tuple[nn.Module, nn.Module]:
        """block -> (norm before attention, norm before the MLP)."""
        block = _unwrap(block)
        return tuple(block.get_submodule(path) for path in self.layout.norms)

    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] int -> hidden [B, L, D]."""
        return self.runner.embed_inputs(input_ids)

    def block_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict:
        """Keyword arguments for `block(hidden, **kwargs)`: rotary (cos, sin) and the padding mask."""
        return self.runner.block_kwargs(input_ids, attention_mask)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden after the last block [B, L, D] -> aligned logits [B, L, V] (index i predicts position i)."""
        return align_logits(self.runner.head(hidden), self.shift_logits)

    def select_rows(self, rows: torch.Tensor, shape: tuple[int, int],
                    count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [B, L] bool (of an input of `shape`) -> (batch, position) of the hidden states whose LM head gives the
        aligned logits at rows, in row-major order (Dream's prediction for position i is read from i - 1, position 0
        from itself: `align_logits`). count: rows.sum() where the caller has read it; without it, finding the rows
        waits for the GPU (`nonzero`): call this before the forward, so that the forward, the head and a sampler's
        work after it queue without a wait between them."""
        if rows.shape != tuple(shape) or rows.dtype != torch.bool:
            raise ValueError(f"faircalib.models.adapter: rows must be a bool mask of the input's shape "
                             f"{tuple(shape)}, got {rows.dtype} {tuple(rows.shape)}")
        if count is None:
            batch, position = rows.nonzero(as_tuple=True)
        else:
            batch, position = nonzero_known(rows, count).unbind(1)
        if self.shift_logits:
            position = (position - 1).clamp_min(0)
        return batch, position

    def head_at(self, hidden: torch.Tensor, selected: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """hidden after the last block [B, L, D], selected = `select_rows(rows, ...)` -> the aligned logits at rows,
        [rows.sum(), V] in row-major order: `head(hidden)[rows]`, with the final norm and LM head run on those rows'
        hidden states only."""
        batch, position = selected
        return self.runner.head(hidden[batch, position].unsqueeze(0)).squeeze(0)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, L] int -> hidden after the last block [B, L, D] = embed -> every block."""
        kwargs = self.block_kwargs(input_ids, attention_mask)
        hidden = self.embed_inputs(input_ids)
        for block in self.blocks:
            hidden = block(hidden, **kwargs)
        return hidden

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids: [B, L] int -> aligned logits [B, L, V] = embed -> every block -> head."""
        return self.head(self.hidden(input_ids, attention_mask))

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  rows: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """`logits(input_ids, attention_mask)[rows]` ([rows.sum(), V]) with the LM head run on those rows only: a
        denoising step reads the logits of its masked positions alone, and over a long prompt the head's GEMM over
        every position is a large part of the step (LLaDA-8B's 126464-row head). count: rows.sum(), where known
        (no wait for the GPU then: `select_rows`)."""
        selected = self.select_rows(rows, input_ids.shape, count)
        return self.head_at(self.hidden(input_ids, attention_mask), selected)


def _unwrap(block: nn.Module) -> nn.Module:
    # Remote-code blocks are wrapped (faircalib.models.remote.RemoteBlock); their modules live in `inner`.
    return getattr(block, "inner", block)


def detect_layout(model: nn.Module) -> Layout:
    """The layout whose block list, embedding and final norm all exist in `model`; else a descriptive error."""
    names = {name for name, _ in model.named_modules()}
    for layout in LAYOUTS:
        if {layout.blocks, layout.embed, layout.final_norm} <= names:
            return layout
    expected = "; ".join(f"{l.family}: {l.blocks}.{{i}}, {l.embed}, {l.final_norm}, {l.lm_head}" for l in LAYOUTS)
    raise ValueError(
        f"faircalib.models.adapter: unsupported architecture {type(model).__name__}. Module tree found (top "
        f"levels):\n{module_tree(model)}\nExpected one of: {expected}."
    )


def module_tree(model: nn.Module, depth: int = 3) -> str:
    """Indented `name: ClassName` lines for modules up to `depth` levels below the root (lists shortened)."""
    lines = []
    for name, module in model.named_modules():
        parts = name.split(".") if name else []
        if len(parts) > depth or any(p.isdigit() and p != "0" for p in parts):
            continue
        lines.append(f"{'  ' * len(parts)}{parts[-1] if parts else '(root)'}: {type(module).__name__}")
    return "\n".join(lines)


def get_adapter(model: nn.Module) -> Adapter:
    """model (native, or remote code following the LLaDA or Dream layout) -> its Adapter."""
    layout = detect_layout(model)
    if isinstance(model, BlockwiseLM):
        return Adapter(model, layout, model)
    from faircalib.models.remote import RemoteRunner

    return Adapter(model, layout, RemoteRunner(model, layout))
