"""Stage II: block-by-block calibration, minimising Σ_i w̄_i ‖h^q_i − h*_i‖² (FAIR-Calib) or plain MSE (w̄ = 1).

Only the block being calibrated lives on the compute device. Two activation streams run through the model:
`x_fp` (full-precision blocks on full-precision inputs: the targets h*) and `x_q` (already-quantized blocks: what
the block under calibration sees by default; FlatQuant's original feeds it `x_fp` instead). After each block the
block's state is saved atomically, so an interrupted run resumes where it stopped and ends with the same model.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from faircalib import atomic, kernels
from faircalib.calib.input_memo import InputMemo
from faircalib.calib.methods import Method
from faircalib.calib.quant_linear import CLIP_LOGIT_INIT, QuantLinear
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform
from faircalib.config import QuantConfig
from faircalib.models.adapter import INPUT_GROUPS  # noqa: F401  (re-exported: linears that read one input)

INPUTS = ("quantized", "fp")
# Recorded in the fingerprint: how activations are quantized. State written with one activation clip per linear
# (before the shared per-input quantizer) is a different run and is not resumed.
ACT_QUANT_LAYOUT = "one-quantizer-per-input"


@dataclass(frozen=True)
class CalibOptions:
    """Stage II settings. Defaults follow FlatQuant: 15 epochs, AdamW lr 5e-3 (clips 5e-2), cosine, batch 4.

    batch_size None = `auto_batch_size(seq_len)`: FlatQuant's 4 sequences, or ~256 tokens for short sequences
    (the tiny models' 30-token rows): a step then averages over enough tokens to be stable."""

    epochs: int = 15
    batch_size: int | None = None
    lr: float = 5e-3
    clip_lr: float = 5e-2
    inputs: str = "quantized"
    gptq: bool = False
    smooth_alpha: float = 0.3
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bf16 autocast for the block forward on CUDA

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"CalibOptions.inputs must be one of {INPUTS}, got {self.inputs!r}")
        if self.epochs < 0 or (self.batch_size is not None and self.batch_size < 1):
            raise ValueError(f"CalibOptions: epochs must be >= 0 and batch_size >= 1 "
                             f"(got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and self.clip_lr > 0):  # also refuses NaN
            raise ValueError(f"CalibOptions: lr and clip_lr must be > 0 (got {self.lr}, {self.clip_lr}); to learn "
                             f"nothing, set epochs=0")


@dataclass
class CalibData:
    """Fully observed calibration sequences and the per-row loss weights.

    input_ids: [N, L] long; attention_mask: [N, L] bool (False = padding) or None;
    position_weights: [L] fp32 (the prior w̄; ones for plain MSE)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_weights: torch.Tensor

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape[0] == 0 or self.input_ids.shape[1] == 0:
            raise ValueError(f"CalibData: input_ids must be a non-empty [N, L] tensor, got {tuple(self.input_ids.shape)}")
        if self.attention_mask is not None and self.attention_mask.shape != self.input_ids.shape:
            raise ValueError(f"CalibData: attention_mask {tuple(self.attention_mask.shape)} must match input_ids "
                             f"{tuple(self.input_ids.shape)}")
        if self.position_weights.shape != (self.input_ids.shape[1],):
            raise ValueError(f"CalibData: position_weights must be [L={self.input_ids.shape[1]}], got "
                             f"{tuple(self.position_weights.shape)}")

    def row_weights(self, rows: torch.Tensor) -> torch.Tensor:
        """Loss weight of every (sequence, position) in `rows`: w̄ [L] times the padding mask → [b, L] fp32."""
        w = self.position_weights[None, :].expand(len(rows), -1)
        return w if self.attention_mask is None else w * self.attention_mask[rows].float()


@dataclass
class BlockLog:
    index: int
    loss_init: float
    loss_final: float
    seconds: float
    epoch_losses: list = field(default_factory=list)


def check_finite_weights(adapter) -> None:
    """Fail before any work when a block weight holds NaN/Inf, naming the module."""
    for i, block in enumerate(adapter.blocks):
        for role, lin in adapter.linears(block).items():
            if not torch.isfinite(lin.weight).all():
                raise ValueError(f"block {i} linear '{role}' has non-finite weights; the checkpoint is damaged")


# ----------------------------------------------------------------------------------------------------------------
# Wrapping one block's linears into QuantLinears
# ----------------------------------------------------------------------------------------------------------------

def _smooth_scale(weights: list[torch.Tensor], act_absmax: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """FlatQuant's channel-scale init c_j = max|W_:,j|^(1−α) / max|X_j|^α (x·c, W/c), clamped away from 0."""
    w_max = torch.stack([w.detach().abs().amax(0).float() for w in weights]).amax(0).clamp_min(1e-5)
    if act_absmax is None:
        return torch.ones_like(w_max)
    return (w_max.pow(1 - alpha) / act_absmax.float().clamp_min(1e-5).pow(alpha)).clamp(1e-3, 1e3)


def wrap_block(adapter, block: nn.Module, method: Method, qconfig: QuantConfig, generator: torch.Generator,
               act_absmax: dict[str, torch.Tensor] | None = None, alpha: float = 0.3) -> list[QuantLinear]:
    """Replace the block's linears by QuantLinears with the method's (shared) input transforms.

    The linears of one input group (INPUT_GROUPS) share the transform and, when their activation specs are equal
    (always, unless per-role overrides differ), one activation quantizer: one clip parameter and one InputMemo,
    so the transformed, fake-quantized input is computed once per forward (FlatQuant's layout)."""
    linears = adapter.linears(block)
    wrapped = []
    for group, roles in INPUT_GROUPS.items():
        roles = [r for r in roles if qconfig.specs(r) != (None, None)]
        if not roles:
            continue
        d = linears[roles[0]].in_features
        transform = None
        if method.transform == "learned":
            transform = KroneckerTransform(d, orthogonal_init=generator)
            with torch.no_grad():
                absmax = None if act_absmax is None else act_absmax.get(group)
                transform.channel_scale.copy_(_smooth_scale([linears[r].weight for r in roles], absmax, alpha))
        elif method.transform == "hadamard" and group in ("o_in", "down_in"):
            transform = HadamardTransform(d, generator)
        quantizers: dict = {}  # act spec -> (clip logit | None, memo): one per distinct spec in the group
        for role in roles:
            w_spec, a_spec = qconfig.specs(role)
            lin = linears[role]
            if a_spec not in quantizers:
                clip = (nn.Parameter(torch.tensor(CLIP_LOGIT_INIT, device=lin.weight.device))
                        if method.learns and a_spec is not None else None)
                quantizers[a_spec] = (clip, InputMemo())
            clip, memo = quantizers[a_spec]
            ql = QuantLinear(lin, w_spec, a_spec, transform, learn_clips=method.learns, act_clip_logit=clip,
                             input_memo=memo)
            ql.to(lin.weight.device)
            adapter.set_linear(block, role, ql)
            wrapped.append(ql)
    return wrapped


# ----------------------------------------------------------------------------------------------------------------
# State on disk (atomic, fingerprinted)
# ----------------------------------------------------------------------------------------------------------------

def load_shared_state(module: nn.Module, state: dict, where: str) -> None:
    """`module.load_state_dict(state, strict=True)`, refusing a state whose entries for one shared tensor differ
    (e.g. `q_proj.act_clip_logit` != `k_proj.act_clip_logit`: written with one activation clip per linear, by a
    faircalib before the shared per-input quantizer), which loading would silently collapse to one value."""
    names: dict[int, list[str]] = {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    for group in names.values():
        present = [n for n in group if n in state]
        if any(not torch.equal(state[present[0]], state[n]) for n in present[1:]):
            raise ValueError(f"{where}: the saved state holds different values for {present}, which this faircalib "
                             f"shares (one tensor per linear input); it was written by an older faircalib with one "
                             f"activation clip per linear: calibrate again")
    module.load_state_dict(state, strict=True)


def fingerprint(model: nn.Module, data: CalibData, method: Method, qconfig: QuantConfig, options: CalibOptions) -> str:
    """A hash of everything that decides the result: model weights, data, prior, method, config, versions."""
    import faircalib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(repr(float(p.double().sum())).encode())
        h.update(repr(float(p.double().abs().sum())).encode())
    h.update(data.input_ids.cpu().numpy().tobytes())
    if data.attention_mask is not None:
        h.update(data.attention_mask.cpu().numpy().tobytes())
    h.update(data.position_weights.float().cpu().numpy().tobytes())
    opts = {k: v for k, v in asdict(options).items() if k not in ("device",)}
    meta = {"method": asdict(method), "qconfig": qconfig.to_dict(), "options": opts,
            "faircalib": getattr(faircalib, "__version__", "0"), "torch": torch.__version__.split("+")[0],
            "act_quant": ACT_QUANT_LAYOUT}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()[:16]


class CalibState:
    """`DIR/progress.json` (fingerprint, finished blocks, logs) and `DIR/block_XXX.pt` per finished block."""

    def __init__(self, directory: str, fingerprint_: str, resume: bool):
        self.dir, self.fingerprint, self.resume = directory, fingerprint_, resume
        os.makedirs(directory, exist_ok=True)

    def _progress_path(self) -> str:
        return os.path.join(self.dir, "progress.json")

    def load(self) -> tuple[int, list[dict]]:
        """(number of finished blocks, their logs); raises if the state belongs to a different run.

        Without `resume`, an earlier state in the directory is ignored and will be overwritten."""
        path = self._progress_path()
        if not self.resume or not os.path.exists(path):
            return 0, []
        with open(path) as f:
            progress = json.load(f)
        if progress["fingerprint"] != self.fingerprint:
            raise ValueError(f"--resume: {self.dir} holds a calibration of a different model/data/config "
                             f"(fingerprint {progress['fingerprint']} != {self.fingerprint}); use a new --out "
                             "directory or drop --resume")
        return progress["finished_blocks"], progress["logs"]

    def block_path(self, i: int) -> str:
        return os.path.join(self.dir, f"block_{i:03d}.pt")

    def save_block(self, i: int, block: nn.Module, logs: list[dict]) -> None:
        atomic.write_file(self.block_path(i), lambda p: torch.save(block.state_dict(), p))
        progress = {"fingerprint": self.fingerprint, "finished_blocks": i + 1, "logs": logs}
        atomic.write_json(self._progress_path(), progress, indent=1)


# ----------------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------------

class _Streams:
    """The calibration activations [N, L, D], kept on the compute device when they fit, else on the CPU."""

    def __init__(self, hidden: torch.Tensor, device: torch.device, two_streams: bool):
        need = hidden.numel() * hidden.element_size() * (3 if two_streams else 2)
        fits = device.type == "cuda" and need < 0.5 * torch.cuda.mem_get_info(device)[0]
        self.store = device if fits or device.type == "cpu" else torch.device("cpu")
        self.x_fp = hidden.to(self.store)
        self.x_q = self.x_fp.clone() if two_streams else self.x_fp


def auto_batch_size(seq_len: int) -> int:
    """Sequences per step when none is given: at least 4, and at least ~256 tokens."""
    return max(4, 256 // max(1, seq_len))


def _batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    idx = torch.arange(n) if order is None else order
    for s in range(0, n, batch_size):
        yield idx[s:s + batch_size]


def _forward(adapter, block, x: torch.Tensor, data: CalibData, rows: torch.Tensor, device, amp: bool) -> torch.Tensor:
    ids = data.input_ids[rows].to(device)
    mask = None if data.attention_mask is None else data.attention_mask[rows].to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        return block(x.to(device), **adapter.block_kwargs(ids, mask))


@torch.no_grad()
def _map_stream(adapter, block, x: torch.Tensor, data, options, device) -> torch.Tensor:
    out = torch.empty_like(x)
    for rows in _batches(x.shape[0], options.batch_size):
        out[rows.to(x.device)] = _forward(adapter, block, x[rows.to(x.device)], data, rows, device, options.amp).to(out.dtype)
    return out


def _weighted_loss(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return kernels.weighted_mse(out.float(), target.float(), weights.to(out.device))


def _unique(params) -> list[nn.Parameter]:
    """Parameters in first-seen order, each once (shared parameters appear under every linear that reads them)."""
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _optimise(adapter, block, wrapped: list[QuantLinear], x_in, targets, data: CalibData, options: CalibOptions,
              device, generator: torch.Generator) -> list[float]:
    """AdamW + cosine over epochs; each batch's loss is divided by its own detached value (FlatQuant)."""
    transforms = {id(q.input_transform): q.input_transform for q in wrapped if q.input_transform is not None}
    t_params = [p for t in transforms.values() for p in t.parameters() if p.requires_grad]
    # An input group's linears share one act clip parameter: hand it to the optimizer once.
    c_params = _unique(p for q in wrapped for p in (q.weight_clip_logit, q.act_clip_logit) if p is not None)
    n = x_in.shape[0]
    steps = options.epochs * math.ceil(n / options.batch_size)
    opt = torch.optim.AdamW([{"params": t_params, "lr": options.lr}, {"params": c_params, "lr": options.clip_lr}],
                            weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    epoch_losses = []
    for _ in range(options.epochs):
        total = 0.0
        for rows in _batches(n, options.batch_size, torch.randperm(n, generator=generator)):
            r = rows.to(x_in.device)
            out = _forward(adapter, block, x_in[r], data, rows, device, options.amp)
            loss = _weighted_loss(out, targets[r].to(device), data.row_weights(rows))
            opt.zero_grad(set_to_none=True)
            (loss / loss.detach().clamp_min(1e-30)).backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        epoch_losses.append(total)
    return epoch_losses


@torch.no_grad()
def _stream_loss(adapter, block, x_in, targets, data, options, device) -> float:
    total = 0.0
    for rows in _batches(x_in.shape[0], options.batch_size):
        r = rows.to(x_in.device)
        out = _forward(adapter, block, x_in[r], data, rows, device, options.amp)
        total += float(_weighted_loss(out, targets[r].to(device), data.row_weights(rows)))
    return total


@torch.no_grad()
def _observe_inputs(adapter, block, modules: list[nn.Module], x_in, data: CalibData, options, device, observe) -> None:
    """One pass of `block` over the stream; `observe(module, x [n, K])` sees each module's input at real tokens
    only (padding rows are left out: their hidden states are never attended to and would skew statistics)."""
    batch_mask: dict[str, torch.Tensor | None] = {}

    def hook(module, args):
        x, mask = args[0], batch_mask["current"]
        observe(module, x.reshape(-1, x.shape[-1]) if mask is None else x[mask])

    hooks = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        for rows in _batches(x_in.shape[0], options.batch_size):
            batch_mask["current"] = None if data.attention_mask is None else data.attention_mask[rows].to(device)
            _forward(adapter, block, x_in[rows.to(x_in.device)], data, rows, device, options.amp)
    finally:
        for h in hooks:
            h.remove()


def _input_absmax(adapter, block, x_in, data, options, device) -> dict[str, torch.Tensor]:
    """Per-channel max |x| at each input group of the (still full-precision) block: group -> [K] fp32."""
    linears = adapter.linears(block)
    group_of = {linears[roles[0]]: group for group, roles in INPUT_GROUPS.items()}
    stats: dict[str, torch.Tensor] = {}

    def observe(module, x):
        m = x.detach().abs().amax(0).float() if x.shape[0] else torch.zeros(x.shape[-1], device=x.device)
        group = group_of[module]
        stats[group] = m if group not in stats else torch.maximum(stats[group], m)

    _observe_inputs(adapter, block, list(group_of), x_in, data, options, device, observe)
    return stats


@torch.no_grad()
def _apply_gptq(adapter, block, wrapped, x_in, data, options, device) -> None:
    from faircalib.calib.gptq import HessianAccumulator, gptq_quantize

    quantized = {q for q in wrapped if q.weight_spec is not None}
    # The linears of one input group read the same (transformed) input: one Hessian per group, observed at its
    # first quantized linear.
    accs, observed = {}, {}
    for members in adapter.input_groups(block).values():
        members = [m for m in members.values() if m in quantized]
        if members:
            acc = HessianAccumulator(members[0].in_features, device)
            observed[members[0]] = acc
            accs.update({m: acc for m in members})

    def observe(module, x):
        observed[module].add(x if module.input_transform is None else module.input_transform(x))

    _observe_inputs(adapter, block, list(observed), x_in, data, options, device, observe)
    for q in wrapped:
        q.fold()
        if q in accs:
            gptq_quantize(q, accs[q].h)


def calibrate_blocks(adapter, data: CalibData, method: Method, qconfig: QuantConfig, options: CalibOptions,
                     state: CalibState | None = None, progress: bool = True) -> list[dict]:
    """Quantize every block of `adapter`'s model in order; returns one log dict per block.

    Blocks end as folded QuantLinears. With `state`, finished blocks are saved after each block and blocks already
    finished in `state` are restored instead of recomputed (resume)."""
    from tqdm.auto import tqdm

    device = torch.device(options.device)
    if options.batch_size is None:
        options = replace(options, batch_size=auto_batch_size(data.input_ids.shape[1]))
    blocks = adapter.blocks
    done, logs = state.load() if state is not None else (0, [])
    with torch.no_grad():
        hidden = adapter.embed_inputs(data.input_ids.to(adapter.embed.weight.device)).float()
    streams = _Streams(hidden, device, two_streams=options.inputs == "quantized")
    bar = tqdm(range(len(blocks)), desc=f"Stage II {method.name}", disable=not progress, unit="block")
    for i in bar:
        start = time.perf_counter()
        block = blocks[i]
        home = next(block.parameters()).device
        home_dtype = next(block.parameters()).dtype
        block.to(device=device, dtype=torch.float32)
        x_in = streams.x_q
        targets = _map_stream(adapter, block, streams.x_fp, data, options, device)
        generator = torch.Generator().manual_seed(options.seed * 100003 + i)
        if i < done:
            wrapped = wrap_block(adapter, block, method, qconfig, generator)
            for q in wrapped:
                q.fold()
            load_shared_state(block, torch.load(state.block_path(i), map_location=device), state.block_path(i))
        else:
            act_absmax = _input_absmax(adapter, block, x_in, data, options, device) if method.learns else None
            wrapped = wrap_block(adapter, block, method, qconfig, generator, act_absmax, options.smooth_alpha)
            loss_init = _stream_loss(adapter, block, x_in, targets, data, options, device)
            epoch_losses = []
            if method.learns and options.epochs > 0:
                epoch_losses = _optimise(adapter, block, wrapped, x_in, targets, data, options, device, generator)
            if options.gptq:
                _apply_gptq(adapter, block, wrapped, x_in, data, options, device)
            for q in wrapped:
                q.fold()
            loss_final = _stream_loss(adapter, block, x_in, targets, data, options, device)
            logs.append(asdict(BlockLog(i, loss_init, loss_final, time.perf_counter() - start, epoch_losses)))
            if state is not None:
                state.save_block(i, block, logs)
            bar.set_postfix(loss=f"{loss_init:.3g}->{loss_final:.3g}", s=f"{logs[-1]['seconds']:.1f}")
        streams.x_q = (_map_stream(adapter, block, x_in, data, options, device)
                       if options.inputs == "quantized" else targets)
        streams.x_fp = targets
        for p in block.parameters():
            p.requires_grad_(False)
        # Folded weights go back to the model's dtype (deployment quantizes what is stored); transforms, clips and
        # GPTQ's pinned scales stay fp32 (codes q·s survive a bf16 round trip: |q| ≤ 2^(b-1) keeps the error < 0.5).
        for q in wrapped:
            q.weight.data = q.weight.data.to(home_dtype)
        block.to(device=home)
    return logs
