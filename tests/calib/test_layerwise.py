"""Stage II building blocks: options and data validation, loss weights (padding gets none), how a block's linears
are wrapped (shared transforms per input), the run fingerprint and the state directory, and the block loop's
two input streams."""
import json

import pytest
import torch

from faircalib import kernels
from faircalib.calib.layerwise import (CalibData, CalibOptions, CalibState, calibrate_blocks, check_finite_weights,
                                       fingerprint, load_shared_state, wrap_block)
from faircalib.calib.methods import METHODS, get_method
from faircalib.calib.quant_linear import QuantLinear
from faircalib.calib.transforms import HadamardTransform, KroneckerTransform
from faircalib.config import QuantConfig, QuantSpec
from faircalib.models import get_adapter
from tests.calib.conftest import calib_ids, left_padding_mask, tiny_model

L = 16


@pytest.mark.parametrize("kwargs, match", [
    ({"inputs": "teacher"}, "inputs must be one of"),
    ({"epochs": -1}, "epochs must be >= 0"),
    ({"batch_size": 0}, "batch_size >= 1"),
    ({"lr": 0.0}, "lr and clip_lr must be > 0"),
    ({"clip_lr": -1e-3}, "lr and clip_lr must be > 0"),
    ({"lr": float("nan")}, "lr and clip_lr must be > 0"),
])
def test_options_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CalibOptions(**kwargs)


def test_data_validation():
    ids = calib_ids(n=2, length=L)
    with pytest.raises(ValueError, match="non-empty"):
        CalibData(torch.zeros(0, L, dtype=torch.long), None, torch.ones(L))
    with pytest.raises(ValueError, match="non-empty"):
        CalibData(ids[0], None, torch.ones(L))
    with pytest.raises(ValueError, match="attention_mask"):
        CalibData(ids, torch.ones(2, L - 1, dtype=torch.bool), torch.ones(L))
    with pytest.raises(ValueError, match=r"position_weights must be \[L=16\]"):
        CalibData(ids, None, torch.ones(L - 1))


def test_padding_positions_get_zero_loss_weight():
    weights = torch.linspace(0.5, 1.5, L)
    mask = left_padding_mask(4, L, [0, 3, 7, 1])
    data = CalibData(calib_ids(n=4, length=L), mask, weights)
    rows = torch.tensor([2, 0, 1])
    got = data.row_weights(rows)
    assert got.shape == (3, L) and got.dtype == torch.float32
    assert torch.equal(got, weights[None] * mask[rows].float())
    assert got[0, :7].eq(0).all() and got[2, :3].eq(0).all() and torch.equal(got[1], weights)
    assert torch.equal(CalibData(data.input_ids, None, weights).row_weights(rows), weights.expand(3, L))


def test_wrap_block_shares_one_transform_per_input(family, gen):
    model = tiny_model(family)
    adapter = get_adapter(model)
    block = adapter.blocks[0]
    original = {r: lin.weight.detach().clone() for r, lin in adapter.linears(block).items()}
    wrapped = wrap_block(adapter, block, get_method("flatquant"), QuantConfig(), gen)
    lin = adapter.linears(block)
    assert len(wrapped) == 7 and all(isinstance(m, QuantLinear) for m in lin.values())
    assert lin["q"].input_transform is lin["k"].input_transform is lin["v"].input_transform
    assert lin["gate"].input_transform is lin["up"].input_transform
    distinct = {id(lin[r].input_transform) for r in ("q", "o", "gate", "down")}
    assert len(distinct) == 4 and all(isinstance(lin[r].input_transform, KroneckerTransform) for r in lin)
    assert all(lin[r].weight_clip_logit is not None and lin[r].act_clip_logit is not None for r in lin)
    assert all(torch.equal(lin[r].weight, original[r]) for r in lin)
    assert all(not m.folded for m in wrapped)


def test_wrap_block_shares_one_activation_quantizer_per_input(family, gen):
    adapter = get_adapter(tiny_model(family))
    block = adapter.blocks[0]
    wrap_block(adapter, block, get_method("flatquant"), QuantConfig(), gen)
    lin = adapter.linears(block)
    assert lin["q"].act_clip_logit is lin["k"].act_clip_logit is lin["v"].act_clip_logit
    assert lin["gate"].act_clip_logit is lin["up"].act_clip_logit
    assert lin["q"].input_memo is lin["k"].input_memo is lin["v"].input_memo and lin["q"].input_memo.size == 3
    assert lin["gate"].input_memo is lin["up"].input_memo and lin["gate"].input_memo.size == 2
    clips = [name for name, _ in block.named_parameters() if name.endswith("act_clip_logit")]
    assert len(clips) == 4  # one per input: q/k/v, o, gate/up, down
    assert sum(name.endswith("act_clip_logit") for name in block.state_dict()) == 7  # every linear still lists it


def _count_fake_quant_act(monkeypatch) -> list:
    calls, original = [], kernels.fake_quant_act

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "fake_quant_act", counted)
    return calls


@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant"])
def test_a_block_forward_quantizes_each_input_once(method, monkeypatch, gen):
    adapter = get_adapter(tiny_model("dream"))
    block = adapter.blocks[0]
    wrap_block(adapter, block, get_method(method), QuantConfig(), gen)
    calls = _count_fake_quant_act(monkeypatch)
    ids = calib_ids(n=2, length=L)
    hidden = adapter.embed_inputs(ids)
    with torch.no_grad():
        block(hidden, **adapter.block_kwargs(ids))
    assert len(calls) == 4
    block(hidden, **adapter.block_kwargs(ids)).square().sum().backward()
    assert len(calls) == 8


def test_different_act_specs_in_one_input_get_their_own_quantizers(gen):
    adapter = get_adapter(tiny_model("llada"))
    block = adapter.blocks[0]
    config = QuantConfig(overrides={"v": (QuantSpec(4), QuantSpec(8))})
    wrap_block(adapter, block, get_method("flatquant"), config, gen)
    lin = adapter.linears(block)
    assert lin["q"].act_clip_logit is lin["k"].act_clip_logit is not lin["v"].act_clip_logit
    assert lin["q"].input_memo is lin["k"].input_memo is not lin["v"].input_memo
    assert lin["v"].input_transform is lin["q"].input_transform and lin["v"].act_spec == QuantSpec(8)


def test_the_optimizer_gets_each_shared_parameter_once(monkeypatch):
    seen = []
    adamw = torch.optim.AdamW

    def recording(groups, **kwargs):
        seen.append([p for g in groups for p in g["params"]])
        return adamw(groups, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording)
    adapter = get_adapter(tiny_model("llada"))
    calibrate_blocks(adapter, _data(), METHODS["flatquant"], QuantConfig(), CalibOptions(epochs=1), progress=False)
    assert len(seen) == 2
    for params in seen:
        assert len({id(p) for p in params}) == len(params)
        assert sum(p.shape == () for p in params) == 4  # the act clips: one per input


def test_gptq_reads_one_hessian_per_input_group(monkeypatch):
    """GPTQ observes each input group once; its codes equal those of per-linear Hessians of the same inputs."""
    from faircalib.calib import gptq

    adds = []
    add = gptq.HessianAccumulator.add

    def counted(self, x):
        adds.append(self)
        add(self, x)

    monkeypatch.setattr(gptq.HessianAccumulator, "add", counted)
    data = _data()
    options = CalibOptions(epochs=0, gptq=True, batch_size=3)
    adapter = get_adapter(tiny_model("llada"))
    calibrate_blocks(adapter, data, METHODS["rtn"], QuantConfig(), options, progress=False)
    assert len(adds) == 2 * 4 * 2 and len(set(map(id, adds))) == 2 * 4  # blocks x groups x batches

    # Reference: block 0 again, every linear with its own Hessian of its own observed inputs.
    monkeypatch.setattr(gptq.HessianAccumulator, "add", add)
    reference = get_adapter(tiny_model("llada"))
    block = reference.blocks[0]
    wrapped = wrap_block(reference, block, METHODS["rtn"], QuantConfig(), torch.Generator().manual_seed(0))
    accs = {q: gptq.HessianAccumulator(q.in_features) for q in wrapped}
    hooks = [q.register_forward_pre_hook(lambda m, args: accs[m].add(args[0].reshape(-1, args[0].shape[-1])))
             for q in wrapped]
    with torch.no_grad():
        for rows in (torch.arange(0, 3), torch.arange(3, 6)):
            ids = data.input_ids[rows]
            block(reference.embed_inputs(ids), **reference.block_kwargs(ids))
    for h in hooks:
        h.remove()
    got = adapter.linears(adapter.blocks[0])
    for role, q in reference.linears(block).items():
        q.fold()
        gptq.gptq_quantize(q, accs[q].h)
        assert torch.equal(q.weight, got[role].weight), role
        assert torch.equal(q.fixed_weight_scale, got[role].fixed_weight_scale), role


def test_a_state_with_one_clip_per_linear_is_refused(gen):
    """State written by a faircalib with per-linear activation clips cannot be collapsed onto one shared clip."""
    adapter = get_adapter(tiny_model("llada"))
    block = adapter.blocks[0]
    wrap_block(adapter, block, get_method("flatquant"), QuantConfig(), gen)
    state = {k: v.clone() for k, v in block.state_dict().items()}
    load_shared_state(block, state, "block_000.pt")  # a state of this faircalib loads
    k_clip = next(k for k in state if k.endswith("k_proj.act_clip_logit"))
    state[k_clip] = state[k_clip] + 1.0
    with pytest.raises(ValueError, match=r"block_000.pt: .*k_proj.act_clip_logit.*older faircalib"):
        load_shared_state(block, state, "block_000.pt")


def test_wrap_block_quarot_and_rtn(gen):
    adapter = get_adapter(tiny_model("llada"))
    quarot, rtn = adapter.blocks
    wrap_block(adapter, quarot, get_method("quarot"), QuantConfig(), gen)
    lin = adapter.linears(quarot)
    assert isinstance(lin["o"].input_transform, HadamardTransform)
    assert isinstance(lin["down"].input_transform, HadamardTransform)
    assert all(lin[r].input_transform is None for r in ("q", "k", "v", "gate", "up"))
    assert all(lin[r].weight_clip_logit is None for r in lin)
    wrap_block(adapter, rtn, get_method("rtn"), QuantConfig(), gen)
    assert all(m.input_transform is None and m.folded for m in adapter.linears(rtn).values())


def test_wrap_block_follows_per_role_config(gen):
    adapter = get_adapter(tiny_model("llada"))
    block = adapter.blocks[0]
    config = QuantConfig(overrides={"down": (QuantSpec(8), None)}, skip=("o", "gate"))
    wrapped = wrap_block(adapter, block, get_method("flatquant"), config, gen)
    lin = adapter.linears(block)
    assert len(wrapped) == 5
    assert type(lin["o"]) is torch.nn.Linear and type(lin["gate"]) is torch.nn.Linear
    assert lin["down"].weight_spec == QuantSpec(8) and lin["down"].act_spec is None
    assert lin["down"].act_clip_logit is None


def test_non_finite_weight_is_named(family):
    adapter = get_adapter(tiny_model(family))
    check_finite_weights(adapter)
    with torch.no_grad():
        adapter.linears(adapter.blocks[1])["up"].weight[3, 2] = float("inf")
    with pytest.raises(ValueError, match=r"block 1 linear 'up' has non-finite weights"):
        check_finite_weights(adapter)


def _data(mask=None, weights=None) -> CalibData:
    return CalibData(calib_ids(n=6, length=L), mask, torch.ones(L) if weights is None else weights)


def test_fingerprint_tracks_what_decides_the_result():
    model = tiny_model("llada")
    method, config, options = get_method("flatquant"), QuantConfig(), CalibOptions()
    base = fingerprint(model, _data(), method, config, options)
    assert fingerprint(model, _data(), method, config, options) == base
    assert fingerprint(model, _data(), method, config, CalibOptions(device="meta")) == base  # where, not what
    other_ids = CalibData(calib_ids(seed=2, n=6, length=L), None, torch.ones(L))
    changed = [
        fingerprint(tiny_model("llada", seed=1), _data(), method, config, options),
        fingerprint(model, other_ids, method, config, options),
        fingerprint(model, _data(mask=left_padding_mask(6, L, [2])), method, config, options),
        fingerprint(model, _data(weights=torch.linspace(0.5, 1.5, L)), method, config, options),
        fingerprint(model, _data(), get_method("fair"), config, options),
        fingerprint(model, _data(), method, QuantConfig.w_a(3, 4), options),
        fingerprint(model, _data(), method, config, CalibOptions(epochs=2)),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_state_refuses_a_different_run(tmp_path):
    block = torch.nn.Linear(2, 2)
    CalibState(str(tmp_path), "aaaa", resume=False).save_block(0, block, [{"index": 0}])
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress == {"fingerprint": "aaaa", "finished_blocks": 1, "logs": [{"index": 0}]}
    assert CalibState(str(tmp_path), "aaaa", resume=True).load() == (1, [{"index": 0}])
    assert CalibState(str(tmp_path), "bbbb", resume=False).load() == (0, [])  # no resume: start afresh
    with pytest.raises(ValueError, match=r"different model/data/config .* use a new --out directory or drop --resume"):
        CalibState(str(tmp_path), "bbbb", resume=True).load()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_fp_inputs_feed_each_block_the_fp_stream():
    """Block 0 sees the same inputs either way; block 1 sees FP inputs only with inputs="fp"."""
    data = _data()
    logs = {}
    for inputs in ("quantized", "fp"):
        adapter = get_adapter(tiny_model("llada"))
        logs[inputs] = calibrate_blocks(adapter, data, METHODS["rtn"], QuantConfig(),
                                        CalibOptions(inputs=inputs, batch_size=4), progress=False)
    first = [{k: v for k, v in log.items() if k != "seconds"} for log in (logs["quantized"][0], logs["fp"][0])]
    assert first[0] == first[1]
    assert logs["fp"][1]["loss_init"] < logs["quantized"][1]["loss_init"]


def test_blocks_end_folded_without_gradients():
    adapter = get_adapter(tiny_model("dream"))
    logs = calibrate_blocks(adapter, _data(), METHODS["flatquant"], QuantConfig(), CalibOptions(epochs=1),
                            progress=False)
    assert [log["index"] for log in logs] == [0, 1] and all(len(log["epoch_losses"]) == 1 for log in logs)
    for block in adapter.blocks:
        assert all(isinstance(m, QuantLinear) and m.folded for m in adapter.linears(block).values())
        assert not any(p.requires_grad for p in block.parameters())
