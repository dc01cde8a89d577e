"""transformers loads faircalib W4A4 checkpoints through the registered quantizer (after `import faircalib`)."""
import pytest
import torch
from transformers import AutoModel

import faircalib  # noqa: F401  (registers quant_method "faircalib")
from faircalib.deploy.checkpoint import save_quantized
from faircalib.deploy.hf_quantizer import is_w4a4
from faircalib.deploy.w4a4_linear import W4A4Linear, convert_to_w4a4
from faircalib.models import get_adapter

from .conftest import quantized_tiny


@pytest.fixture
def checkpoint(tmp_path, family):
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    save_quantized(model, tmp_path)
    return model, tmp_path


def test_automodel_loads_w4a4_modules(checkpoint):
    model, path = checkpoint
    loaded = AutoModel.from_pretrained(path, dtype=torch.float32)
    assert is_w4a4(loaded), "transformers loaded a dense model: the modules were not swapped"
    assert sum(isinstance(m, W4A4Linear) for m in loaded.modules()) == 14
    for block in get_adapter(loaded).blocks:  # q/k/v and gate/up linked: one quantization per input
        lin = get_adapter(loaded).linears(block)
        assert lin["q"].shared_input is lin["k"].shared_input is lin["v"].shared_input is not None
        assert lin["gate"].shared_input is lin["up"].shared_input is not None
    ids = torch.randint(0, 48, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(get_adapter(loaded).logits(ids), get_adapter(model).logits(ids))


def test_bf16_load_keeps_codes_and_fp32_scales(checkpoint):
    _, path = checkpoint
    loaded = AutoModel.from_pretrained(path, dtype=torch.bfloat16)
    linear = next(m for m in loaded.modules() if isinstance(m, W4A4Linear))
    assert linear.weight_packed.dtype == torch.int8
    assert all(getattr(linear, n).dtype == torch.float32 for n in ("weight_scale", "act_clip", "channel_scale"))
    assert linear.left.dtype == linear.right.dtype == torch.bfloat16  # as load_quantized: factors follow bf16
    assert is_w4a4(loaded) and linear.shared_input is not None


def test_damaged_weights_fail_before_loading(checkpoint):
    _, path = checkpoint
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the last tensor: the header still parses, only the checksum sees it
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or truncated"):
        AutoModel.from_pretrained(path)
    (path / "model.safetensors").write_bytes(bytes(data[:-10]))
    with pytest.raises(Exception, match="corrupted or truncated|incomplete|deserializ"):  # transformers reads the
        AutoModel.from_pretrained(path)  # header first, so a truncation may surface as its SafetensorError
