"""Packed W4A4 checkpoints: save -> load gives the same model; damaged or foreign checkpoints fail clearly."""
import json

import pytest
import torch

from faircalib.deploy.checkpoint import load_quantized, save_quantized
from faircalib.deploy.shared_input import share_input_quantization
from faircalib.deploy.w4a4_linear import W4A4Linear, convert_to_w4a4
from faircalib.diffusion.config import SamplerConfig
from faircalib.diffusion.generate import generate
from faircalib import kernels
from faircalib import cli
from faircalib.models import get_adapter, load_model
from faircalib.zoo import CharTokenizer

from .conftest import quantized_tiny


@pytest.fixture
def saved(tmp_path, family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    save_quantized(model, tmp_path, fingerprint="fp-123")
    return model, tmp_path, family


def test_round_trip_is_identical(saved):
    model, path, family = saved
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "faircalib" and config["fingerprint"] == "fp-123"
    loaded = load_quantized(path)
    names = [n for n, m in loaded.named_modules() if isinstance(m, W4A4Linear)]
    assert sorted(names) == sorted(config["modules"]) and len(names) == 14
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for block in get_adapter(loaded).blocks:  # q/k/v and gate/up linked again: one quantization per input
        lin = get_adapter(loaded).linears(block)
        assert lin["q"].shared_input is lin["k"].shared_input is lin["v"].shared_input is not None
        assert lin["gate"].shared_input is lin["up"].shared_input is not None
    sampler = SamplerConfig(sampler="llada" if family == "llada" else "dream", gen_length=8, steps=8)
    prompt = torch.randint(0, 48, (2, 6), generator=torch.Generator().manual_seed(1))
    a = generate(model, prompt, sampler, generator=torch.Generator().manual_seed(2)).tokens
    b = generate(loaded, prompt, sampler, generator=torch.Generator().manual_seed(2)).tokens
    assert torch.equal(a, b)


def test_load_model_and_the_cli_take_a_packed_checkpoint(tmp_path, family, capsys):
    model = quantized_tiny(family, "flatquant", shipped=True)
    convert_to_w4a4(model)
    save_quantized(model, tmp_path)
    CharTokenizer().save(tmp_path)
    loaded = load_model(tmp_path)
    assert sum(isinstance(m, W4A4Linear) for m in loaded.modules()) == 7 * len(get_adapter(loaded).blocks)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    argv = ["generate", "--model", str(tmp_path), "--prompt", "12+34=", "--steps", "4", "--gen-length", "4"]
    assert cli.main(argv) == 0
    answer = capsys.readouterr().out.strip()
    assert answer and cli.main([*argv, "--keep-unpacked"]) == 0 and capsys.readouterr().out.strip() == answer


def test_load_model_names_a_foreign_quantization_method(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llada", "quantization_config": {
        "quant_method": "compressed-tensors"}}))
    with pytest.raises(ValueError, match="'compressed-tensors' quantized checkpoint"):
        load_model(tmp_path)


def test_factors_follow_a_16_bit_load_dtype(saved):
    model, path, family = saved
    bf16 = load_quantized(path, dtype=torch.bfloat16)
    linear = next(m for m in bf16.modules() if isinstance(m, W4A4Linear))
    assert linear.left.dtype == linear.right.dtype == torch.bfloat16
    assert linear.channel_scale.dtype == linear.weight_scale.dtype == torch.float32
    kept = load_quantized(path, dtype=torch.bfloat16, factor_dtype=torch.float32)
    assert next(m for m in kept.modules() if isinstance(m, W4A4Linear)).left.dtype == torch.float32
    with pytest.raises(ValueError, match="factor_dtype must be a float dtype"):
        load_quantized(path, factor_dtype=torch.int8)
    # The format stores fp32 factors: a model holding bf16 ones is refused, not silently written.
    with pytest.raises(ValueError, match="factor_dtype=torch.float32"):
        save_quantized(bf16, path.parent / "resaved")
    save_quantized(kept.float(), path.parent / "resaved")


def test_bf16_factors_move_few_activation_codes(saved):
    """bf16 factors round the transform's last bits: a code moves by one step where a value sits near a rounding
    boundary (generated tokens can then change where the model has near-ties, as with any last-bit change)."""
    _, path, _ = saved
    fp32 = next(m for m in load_quantized(path).modules() if isinstance(m, W4A4Linear))
    bf16 = next(m for m in load_quantized(path, factor_dtype=torch.bfloat16).modules() if isinstance(m, W4A4Linear))
    x = torch.randn(256, fp32.in_features, generator=torch.Generator().manual_seed(0))
    codes = [kernels.quantize_act_packed(x, 4, m.act_clip, m.channel_scale, m.left, m.right)[0] for m in (fp32, bf16)]
    moved = (codes[0].int() - codes[1].int()).abs()
    assert moved.max() <= 1 and 0 < moved.float().mean() < 0.02


def test_a_checkpoint_with_one_clip_per_linear_loads_unlinked(tmp_path, family):
    """Checkpoints calibrated before the shared quantizer hold different clips in q/k/v: they load, warn, and run
    each linear's own quantization, as they did."""
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    k = get_adapter(model).linears(get_adapter(model).blocks[1])["k"]
    share_input_quantization([k])
    with torch.no_grad():
        k.act_clip.fill_(0.75)
    save_quantized(model, tmp_path)
    with pytest.warns(UserWarning, match=r"1 input group\(s\) \(e.g. block 1 q/k/v\) hold different activation clips"):
        loaded = load_quantized(tmp_path)
    adapter = get_adapter(loaded)
    lin = adapter.linears(adapter.blocks[1])
    assert lin["q"].shared_input is None and lin["k"].shared_input is None
    assert lin["gate"].shared_input is lin["up"].shared_input is not None
    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(adapter.logits(ids), get_adapter(model).logits(ids))


def test_corrupted_file_fails_clearly(saved):
    _, path, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_quantized(path)


def test_truncated_file_fails_clearly(saved):
    _, path, _ = saved
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_quantized(path)


def test_other_version_warns(saved):
    _, path, _ = saved
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["version"] = "0.0.1"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="written by faircalib 0.0.1"):
        load_quantized(path)


def test_foreign_or_unconverted_checkpoints_are_refused(saved, tmp_path):
    model, path, family = saved
    config = json.loads((path / "config.json").read_text())
    del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a faircalib W4A4 checkpoint"):
        load_quantized(path)
    with pytest.raises(ValueError, match="convert_to_w4a4"):
        save_quantized(quantized_tiny(family, "rtn").__class__(get_adapter(model).model.config), tmp_path / "dense")
