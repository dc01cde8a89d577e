"""One calibration run end to end: validate → Stage I (position prior) → residual rotation → Stage II → save.

`calibrate()` is the public entry point (also `faircalib.calibrate`). Every method goes through it; what differs
is data (`methods.py`). The output directory holds:
- `prior.json` / `prior.png`   the Stage I artifact (methods with a FAIR prior)
- `state/`                     per-block state written during Stage II (what `resume=True` continues from)
- `calibrated.pt`              the calibrated model's state dict (fake-quant form: QuantLinears, folded)
- `calibration.json`           recipe, fingerprint, per-block losses, stage times, versions
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from faircalib import atomic
from faircalib.calib.layerwise import CalibData, CalibOptions, CalibState, calibrate_blocks, check_finite_weights
from faircalib.calib.layerwise import fingerprint as run_fingerprint
from faircalib.calib.layerwise import load_shared_state, wrap_block
from faircalib.calib.methods import Method, get_method
from faircalib.calib.prior import PositionPrior, PriorConfig, run_probe
from faircalib.calib.rotation import rotate_residual
from faircalib.config import QuantConfig
from faircalib.diffusion import SamplerConfig
from faircalib.models import get_adapter


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a calibration besides the model and the data."""

    method: str = "fair"
    qconfig: QuantConfig = field(default_factory=QuantConfig)
    options: CalibOptions = field(default_factory=CalibOptions)
    prior: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        get_method(self.method)

    def to_dict(self) -> dict:
        return {"method": self.method, "qconfig": self.qconfig.to_dict(), "options": asdict(self.options),
                "prior": self.prior.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls(d["method"], QuantConfig.from_dict(d["qconfig"]), CalibOptions(**d["options"]),
                   PriorConfig(**d["prior"]))


@dataclass
class CalibrationResult:
    model: nn.Module
    prior: PositionPrior | None
    logs: list
    stage1_seconds: float
    stage2_seconds: float
    fingerprint: str


def _method_prior_config(method: Method, prior: PriorConfig) -> PriorConfig:
    """The method decides which prior terms are on; everything else comes from the recipe."""
    return replace(prior, terms=method.prior if method.needs_probe else "uniform")


class CalibrationInputError(ValueError):
    """What `calibrate` refuses before any work (no mask token, malformed data, a group size that does not divide a
    linear's input, non-finite weights), told apart from failures during the run: the CLI reports it as a usage
    error."""


def _validate(adapter, data_ids: torch.Tensor, attention_mask: torch.Tensor | None, recipe: Recipe) -> None:
    try:
        _check_inputs(adapter, data_ids, attention_mask, recipe)
    except ValueError as error:  # also those of QuantSpec.check_dim and check_finite_weights
        raise CalibrationInputError(str(error)) from error


def _check_inputs(adapter, data_ids: torch.Tensor, attention_mask: torch.Tensor | None, recipe: Recipe) -> None:
    if adapter.mask_token_id is None:
        raise ValueError("calibrate: the model config has no mask_token_id; dLLM calibration needs the mask token")
    if data_ids.dim() != 2 or data_ids.numel() == 0:
        raise ValueError(f"calibrate: the calibration data is empty or malformed: input_ids must be a non-empty "
                         f"[N, L] tensor, got {tuple(data_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != data_ids.shape:
        raise ValueError(f"calibrate: attention_mask {tuple(attention_mask.shape)} must match input_ids "
                         f"{tuple(data_ids.shape)}")
    for i, block in enumerate(adapter.blocks):
        for role, lin in adapter.linears(block).items():
            w_spec, _ = recipe.qconfig.specs(role)
            if w_spec is not None:
                w_spec.check_dim(lin.in_features, f"block {i} linear '{role}'")
    check_finite_weights(adapter)


def calibrate(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
              recipe: Recipe = Recipe(), probe_prompts: list | None = None, probe_sampler: SamplerConfig | None = None,
              prior: PositionPrior | None = None, out_dir: str | os.PathLike | None = None, resume: bool = False,
              progress: bool = True) -> CalibrationResult:
    """Quantize `model` in place with `recipe` (default: FAIR-Calib W4A4) and return it with its logs.

    input_ids / attention_mask: [N, L] fully observed calibration sequences (answers at the end of each row).
    probe_prompts + probe_sampler: Stage I rollouts (prompts: list of 1-D id tensors; the sampler's gen_length and
    steps set the rollout; its kind is forced to `probe`). `prior`: a saved Stage I artifact to reuse instead.
    out_dir: where the prior, per-block state, model and log go (`resume=True` continues an interrupted run)."""
    method = get_method(recipe.method)
    adapter = get_adapter(model)
    _validate(adapter, input_ids, attention_mask, recipe)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    prior_config = _method_prior_config(method, recipe.prior)
    seq_len = input_ids.shape[1]
    prior = prior if method.needs_probe else None  # the method decides: rtn, quarot and flatquant are unweighted
    if method.needs_probe and prior is None:
        prior = _stage1(model, adapter, prior_config, probe_prompts, probe_sampler, seq_len, out, progress, resume)
    stage1 = time.perf_counter() - start
    weights = prior.weights_for(seq_len).float() if prior is not None else torch.ones(seq_len)
    data = CalibData(input_ids, attention_mask, weights)

    start = time.perf_counter()
    generator = torch.Generator().manual_seed(recipe.options.seed)
    if method.transform == "hadamard":
        rotate_residual(adapter, generator)
    fp = run_fingerprint(model, data, method, recipe.qconfig, recipe.options)
    state = CalibState(str(out / "state"), fp, resume) if out is not None else None
    logs = calibrate_blocks(adapter, data, method, recipe.qconfig, recipe.options, state, progress)
    stage2 = time.perf_counter() - start
    result = CalibrationResult(model, prior, logs, stage1, stage2, fp)
    if out is not None:
        save_calibrated(result, recipe, out)
    return result


def _stage1(model, adapter, config: PriorConfig, prompts, sampler, seq_len, out, progress, resume) -> PositionPrior:
    if resume and out is not None and (out / "prior.json").exists():
        saved = PositionPrior.load(out / "prior.json")
        if saved.config == config and saved.seq_len == seq_len:
            return saved  # a finished Stage I of this very recipe: reuse it (resume)
    if not prompts:
        raise ValueError("calibrate: the FAIR prior needs probe prompts (Stage I rolls the teacher out on them)")
    sampler = replace(sampler or SamplerConfig(), sampler="probe", remasking="random", temperature=0.0)
    prior = run_probe(model, prompts, config, sampler, seq_len=seq_len, mask_token_id=adapter.mask_token_id,
                      progress=progress)
    if out is not None:
        prior.save(out / "prior.json")
        prior.plot(out / "prior.png")
    return prior


def save_calibrated(result: CalibrationResult, recipe: Recipe, out: Path, model_name: str | None = None) -> None:
    """Write `calibrated.pt` (state dict) then `calibration.json` (the log; its presence marks a finished run)."""
    import faircalib

    atomic.write_file(out / "calibrated.pt", lambda tmp: torch.save(result.model.state_dict(), tmp))
    config = result.model.config.to_dict() if hasattr(result.model, "config") else {}
    atomic.write_json(out / "calibration.json", {
        "recipe": recipe.to_dict(), "fingerprint": result.fingerprint, "model_config": config,
        "model": model_name or getattr(result.model, "name_or_path", None),
        "stage1_seconds": result.stage1_seconds, "stage2_seconds": result.stage2_seconds,
        "blocks": result.logs, "versions": {"faircalib": faircalib.__version__, "torch": torch.__version__},
    })


def load_calibrated(out_dir: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a calibrated model from `out_dir` onto a fresh copy of its base `model` (fake-quant form)."""
    out = Path(out_dir)
    log_path = out / "calibration.json"
    if not log_path.exists():
        raise FileNotFoundError(f"load_calibrated: {out} holds no finished calibration (calibration.json missing)")
    recipe = Recipe.from_dict(json.loads(log_path.read_text())["recipe"])
    method = get_method(recipe.method)
    adapter = get_adapter(model)
    for block in adapter.blocks:
        for q in wrap_block(adapter, block, method, recipe.qconfig, torch.Generator().manual_seed(0)):
            q.fold()
    state = torch.load(out / "calibrated.pt", map_location="cpu")
    load_shared_state(model, state, str(out / "calibrated.pt"))
    # Frozen, as `calibrate` leaves its blocks (torch's matmul takes another summation path for operands that
    # require grad, even under no_grad: a reloaded model would differ from the calibrated one in the last bit).
    for block in adapter.blocks:
        block.requires_grad_(False)
    return model
