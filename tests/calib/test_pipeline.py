"""`calibrate()` end to end on tiny random models: rtn is plain RTN, flatquant is fair with a uniform prior, an
interrupted run resumes to the same model bit for bit, padding carries no loss, a full FAIR run writes its
artifacts and reloads, and bad inputs fail before any work."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import faircalib.calib.layerwise as layerwise
from faircalib.calib.layerwise import CalibOptions
from faircalib.calib.pipeline import CalibrationInputError, Recipe, calibrate, load_calibrated
from faircalib.calib.prior import PositionPrior, PriorConfig
from faircalib.calib.quant_linear import QuantLinear
from faircalib.config import QuantConfig, QuantSpec
from faircalib.diffusion import SamplerConfig
from faircalib.models import get_adapter
from tests.calib.conftest import calib_ids, left_padding_mask, tiny_model

N, L = 8, 16
IDS = calib_ids(n=N, length=L)
MASK = left_padding_mask(N, L, [0, 2, 5, 1])
LEARN = CalibOptions(epochs=2, batch_size=4)


def _logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return get_adapter(model).logits(ids, mask)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different


def _losses(logs):
    return [{k: v for k, v in log.items() if k != "seconds"} for log in logs]


# ---------------------------------------------------------------------------------------------------------------
# rtn is plain round-to-nearest of every block linear
# ---------------------------------------------------------------------------------------------------------------

def _rtn(t: torch.Tensor, spec: QuantSpec | None) -> torch.Tensor:
    """Symmetric RTN along the last dim (per row, or per group of spec.group_size), written from the formulas."""
    if spec is None:
        return t
    qmax = 2 ** (spec.bits - 1) - 1
    g = t.shape[-1] if spec.group_size == -1 else spec.group_size
    groups = t.reshape(*t.shape[:-1], -1, g)
    scale = groups.abs().amax(-1, keepdim=True) / qmax
    q = torch.clamp(torch.round(groups / scale), -qmax - 1, qmax)
    return (q * scale).reshape(t.shape)


class ExplicitRTN(nn.Module):
    def __init__(self, linear: nn.Linear, weight_spec, act_spec):
        super().__init__()
        self.linear, self.weight_spec, self.act_spec = linear, weight_spec, act_spec

    def forward(self, x):
        return F.linear(_rtn(x, self.act_spec), _rtn(self.linear.weight, self.weight_spec), self.linear.bias)


@pytest.mark.parametrize("qconfig", [
    QuantConfig(),
    QuantConfig(weight=QuantSpec(4, group_size=8), act=QuantSpec(6), overrides={"down": (QuantSpec(3), None)},
                skip=("o",)),
], ids=["w4a4", "grouped+overrides"])
def test_rtn_is_plain_round_to_nearest(family, qconfig):
    model = tiny_model(family)
    reference = copy.deepcopy(model)
    ref_adapter = get_adapter(reference)
    for block in ref_adapter.blocks:
        for role, lin in ref_adapter.linears(block).items():
            ref_adapter.set_linear(block, role, ExplicitRTN(lin, *qconfig.specs(role)))
    result = calibrate(model, IDS, MASK, recipe=Recipe("rtn", qconfig), progress=False)
    adapter = get_adapter(model)
    for block, ref_block in zip(adapter.blocks, ref_adapter.blocks):
        for role, ref in ref_adapter.linears(ref_block).items():
            got = adapter.linears(block)[role]
            if role == "o" and qconfig.skip:
                assert type(got) is nn.Linear and torch.equal(got.weight, ref.linear.weight)
                continue
            assert isinstance(got, QuantLinear) and got.input_transform is None
            assert torch.equal(got.weight, ref.linear.weight)  # rtn changes no weight
            with torch.no_grad():
                assert torch.equal(got.fake_quant_weight(), _rtn(ref.linear.weight, got.weight_spec))
    assert torch.equal(_logits(model), _logits(reference))
    assert all(log["loss_init"] == log["loss_final"] and log["epoch_losses"] == [] for log in result.logs)
    assert result.prior is None


# ---------------------------------------------------------------------------------------------------------------
# flatquant == fair with a uniform prior
# ---------------------------------------------------------------------------------------------------------------

def test_flatquant_is_fair_with_a_uniform_prior(family):
    uniform = PositionPrior(PriorConfig(), torch.ones(L, dtype=torch.float64), seq_len=L)
    assert torch.equal(uniform.weights_for(L), torch.ones(L))
    models = {name: tiny_model(family) for name in ("flatquant", "fair")}
    flat = calibrate(models["flatquant"], IDS, MASK, recipe=Recipe("flatquant", options=LEARN), progress=False)
    fair = calibrate(models["fair"], IDS, MASK, recipe=Recipe("fair", options=LEARN), prior=uniform, progress=False)
    _assert_same_state(models["flatquant"], models["fair"])
    assert _losses(flat.logs) == _losses(fair.logs)
    # Not a vacuous identity: training moved the transforms away from their initialisation.
    q = get_adapter(models["fair"]).linears(get_adapter(models["fair"]).blocks[0])["q"]
    assert not torch.equal(q.input_transform.left, torch.eye(q.input_transform.left.shape[0]))


def test_position_weights_reach_fair_and_only_fair():
    """A non-uniform prior changes fair's result; flatquant stays unweighted even when handed one."""
    scores = torch.linspace(1.0, 3.0, L, dtype=torch.float64)
    prior = PositionPrior(PriorConfig(window=8), scores, seq_len=L)
    options = CalibOptions(epochs=1, batch_size=4)
    models = [tiny_model("llada") for _ in range(3)]
    flat = calibrate(models[0], IDS, MASK, recipe=Recipe("flatquant", options=options), progress=False)
    handed = calibrate(models[1], IDS, MASK, recipe=Recipe("flatquant", options=options), prior=prior, progress=False)
    calibrate(models[2], IDS, MASK, recipe=Recipe("fair", options=options), prior=prior, progress=False)
    assert handed.prior is None and handed.fingerprint == flat.fingerprint
    _assert_same_state(models[1], models[0])
    assert not torch.equal(_logits(models[2]), _logits(models[0]))


# ---------------------------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------------------------

RESUMABLE = Recipe("flatquant", options=CalibOptions(epochs=2, batch_size=4, gptq=True))
OPTIMISE = layerwise._optimise


def _crash_on_block(monkeypatch, block: int) -> list:
    """Make the optimiser raise when it reaches `block` (a crash mid-run); returns the list of blocks it ran."""
    seen = []

    def optimise(adapter, blk, *args, **kwargs):
        seen.append(adapter.blocks.index(blk))
        if seen[-1] == block:
            raise RuntimeError("simulated crash")
        return OPTIMISE(adapter, blk, *args, **kwargs)

    monkeypatch.setattr(layerwise, "_optimise", optimise)
    return seen


def test_resume_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    whole = tiny_model("llada")
    calibrate(whole, IDS, MASK, recipe=RESUMABLE, out_dir=tmp_path / "whole", progress=False)

    crashed = tmp_path / "crashed"
    seen = _crash_on_block(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        calibrate(tiny_model("llada"), IDS, MASK, recipe=RESUMABLE, out_dir=crashed, progress=False)
    assert seen == [0, 1]
    progress = json.loads((crashed / "state" / "progress.json").read_text())
    assert progress["finished_blocks"] == 1 and len(progress["logs"]) == 1
    assert (crashed / "state" / "block_000.pt").exists() and not (crashed / "calibration.json").exists()

    seen = _crash_on_block(monkeypatch, None)
    resumed = tiny_model("llada")
    result = calibrate(resumed, IDS, MASK, recipe=RESUMABLE, out_dir=crashed, resume=True, progress=False)
    assert seen == [1]  # block 0 restored from its saved state, not recomputed
    _assert_same_state(resumed, whole)
    assert any(getattr(m, "fixed_weight_scale", None) is not None for m in resumed.modules())
    saved = {name: torch.load(tmp_path / name / "calibrated.pt") for name in ("whole", "crashed")}
    assert all(torch.equal(saved["whole"][k], saved["crashed"][k]) for k in saved["whole"])
    log = json.loads((crashed / "calibration.json").read_text())
    whole_log = json.loads((tmp_path / "whole" / "calibration.json").read_text())
    assert _losses(log["blocks"]) == _losses(whole_log["blocks"]) == _losses(result.logs)
    assert log["fingerprint"] == whole_log["fingerprint"] == result.fingerprint

    seen.clear()
    again = tiny_model("llada")
    calibrate(again, IDS, MASK, recipe=RESUMABLE, out_dir=crashed, resume=True, progress=False)
    assert seen == []  # a finished run resumes to the same model without optimising anything
    _assert_same_state(again, whole)


@pytest.mark.parametrize("change", ["options", "qconfig", "data", "model"])
def test_resume_refuses_a_different_run(tmp_path, change):
    recipe = Recipe("rtn")
    calibrate(tiny_model("llada"), IDS, MASK, recipe=recipe, out_dir=tmp_path, progress=False)
    model, ids = tiny_model("llada", seed=1 if change == "model" else 0), IDS.flip(0) if change == "data" else IDS
    other = {"options": Recipe("rtn", options=CalibOptions(seed=1)), "qconfig": Recipe("rtn", QuantConfig.w_a(3, 4))}
    with pytest.raises(ValueError, match="--resume: .* holds a calibration of a different model/data/config"):
        calibrate(model, ids, MASK, recipe=other.get(change, recipe), out_dir=tmp_path, resume=True, progress=False)


def test_without_resume_an_old_state_is_overwritten(tmp_path):
    calibrate(tiny_model("llada"), IDS, MASK, recipe=Recipe("rtn"), out_dir=tmp_path, progress=False)
    result = calibrate(tiny_model("llada"), IDS, MASK, recipe=Recipe("rtn", QuantConfig.w_a(3, 4)), out_dir=tmp_path,
                       progress=False)
    progress = json.loads((tmp_path / "state" / "progress.json").read_text())
    assert progress["fingerprint"] == result.fingerprint and progress["finished_blocks"] == 2


# ---------------------------------------------------------------------------------------------------------------
# Padding
# ---------------------------------------------------------------------------------------------------------------

def test_padding_tokens_do_not_reach_the_loss():
    """Rows differ only in the ids under padding: every block's loss is the same (padding has weight 0)."""
    other = IDS.clone()
    other[~MASK] = (other[~MASK] + 7) % 40 + 3
    assert not torch.equal(other, IDS)
    logs = [calibrate(tiny_model("dream"), ids, MASK, recipe=Recipe("rtn"), progress=False).logs
            for ids in (IDS, other)]
    assert _losses(logs[0]) == _losses(logs[1])
    unpadded = calibrate(tiny_model("dream"), other, None, recipe=Recipe("rtn"), progress=False).logs
    assert _losses(unpadded) != _losses(logs[0])


# ---------------------------------------------------------------------------------------------------------------
# A full FAIR-Calib run and its artifacts
# ---------------------------------------------------------------------------------------------------------------

def test_fair_end_to_end_writes_artifacts_and_reloads(family, tmp_path):
    recipe = Recipe("fair", options=LEARN, prior=PriorConfig(n_probe=4, batch_size=4, tol=None, lag_rollouts=1,
                                                             lag_max_states=2, window=6))
    prompts = [ids[:4] for ids in calib_ids(seed=3, n=3, length=4)]
    model = tiny_model(family)
    result = calibrate(model, IDS, MASK, recipe=recipe, probe_prompts=prompts,
                       probe_sampler=SamplerConfig(gen_length=8, steps=8), out_dir=tmp_path, progress=False)
    for name in ("prior.json", "prior.png", "calibrated.pt", "calibration.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    prior = PositionPrior.load(tmp_path / "prior.json")
    assert prior.num_rollouts == 4 and prior.config.terms == "both" and prior.seq_len == L
    weights = prior.weights
    assert torch.equal(weights, result.prior.weights)
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))
    assert weights[-6:].mean() > weights[0] and torch.equal(weights[:L - 6], weights[:1].expand(L - 6))

    log = json.loads((tmp_path / "calibration.json").read_text())
    assert Recipe.from_dict(log["recipe"]) == recipe
    assert log["fingerprint"] == result.fingerprint and len(log["blocks"]) == 2
    assert all(len(block["epoch_losses"]) == 2 for block in log["blocks"])

    reloaded = load_calibrated(tmp_path, tiny_model(family))
    assert torch.equal(_logits(reloaded), _logits(model))
    assert not torch.equal(_logits(model), _logits(tiny_model(family)))

    # The saved prior is reused: a rerun needs no probe prompts and ends with the same model.
    rerun = tiny_model(family)
    calibrate(rerun, IDS, MASK, recipe=recipe, out_dir=tmp_path, resume=True, progress=False)
    _assert_same_state(rerun, model)


def test_without_resume_stage_one_runs_again(tmp_path):
    """A fresh run into a directory holding another model's prior must not reuse that prior."""
    recipe = Recipe("fair", options=CalibOptions(epochs=0),
                    prior=PriorConfig(n_probe=2, batch_size=2, tol=None, lag_rollouts=0, window=6))
    prompts = [ids[:4] for ids in calib_ids(seed=3, n=2, length=4)]

    def run(family, out):
        return calibrate(tiny_model(family), IDS, MASK, recipe=recipe, probe_prompts=prompts,
                         probe_sampler=SamplerConfig(gen_length=8, steps=8), out_dir=out, progress=False).prior

    llada, dream, dream_alone = run("llada", tmp_path), run("dream", tmp_path), run("dream", None)
    assert not torch.equal(llada.scores, dream.scores)
    assert torch.equal(dream.scores, dream_alone.scores)
    assert torch.equal(PositionPrior.load(tmp_path / "prior.json").scores, dream.scores)


def test_quarot_gptq_reloads(tmp_path):
    model = tiny_model("dream")
    calibrate(model, IDS, MASK, recipe=Recipe("quarot", options=CalibOptions(gptq=True)), out_dir=tmp_path,
              progress=False)
    assert not (tmp_path / "prior.json").exists()
    reloaded = load_calibrated(tmp_path, tiny_model("dream"))
    assert torch.equal(_logits(reloaded), _logits(model))


def test_load_calibrated_needs_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration.json missing"):
        load_calibrated(tmp_path, tiny_model("llada"))


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs fail before any work
# ---------------------------------------------------------------------------------------------------------------

def test_empty_data():
    with pytest.raises(ValueError, match="calibration data is empty"):
        calibrate(tiny_model("llada"), torch.zeros(0, L, dtype=torch.long), recipe=Recipe("rtn"), progress=False)


def test_non_finite_weight_is_named_before_stage_one(family):
    model = tiny_model(family)
    with torch.no_grad():
        get_adapter(model).linears(get_adapter(model).blocks[1])["down"].weight[0, 0] = float("nan")
    # fair without probe prompts would fail in Stage I: the weight check must come first
    with pytest.raises(CalibrationInputError, match=r"block 1 linear 'down' has non-finite weights"):
        calibrate(model, IDS, MASK, recipe=Recipe("fair"), progress=False)


def test_group_size_must_divide_in_features():
    with pytest.raises(CalibrationInputError, match=r"block 0 linear 'q': group_size 5 does not divide in_features 32"):
        calibrate(tiny_model("llada"), IDS, recipe=Recipe("rtn", QuantConfig.w_a(4, 4, 5)), progress=False)
    with pytest.raises(CalibrationInputError,
                       match=r"block 0 linear 'down': group_size 32 does not divide in_features 48"):
        calibrate(tiny_model("llada"), IDS, recipe=Recipe("rtn", QuantConfig.w_a(4, 4, 32)), progress=False)


def test_missing_mask_token():
    model = tiny_model("dream")
    model.config.mask_token_id = None
    with pytest.raises(ValueError, match="no mask_token_id"):
        calibrate(model, IDS, recipe=Recipe("rtn"), progress=False)


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown calibration method 'gptq'"):
        Recipe("gptq")


def test_fair_needs_probe_prompts():
    with pytest.raises(ValueError, match="needs probe prompts"):
        calibrate(tiny_model("llada"), IDS, MASK, recipe=Recipe("fair"), progress=False)
