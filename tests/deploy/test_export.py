"""`export_quantized`: the CLI's one entry point writes either format from a calibrated (fake-quant) model."""
import json

import pytest
import torch

from faircalib.calib.quant_linear import QuantLinear
from faircalib.deploy import export_quantized, load_quantized
from faircalib.models import get_adapter

from .conftest import quantized_tiny


def test_faircalib_export_keeps_the_callers_model(tmp_path):
    fake = quantized_tiny("dream", "flatquant")
    export_quantized(fake, tmp_path, "faircalib", fingerprint="f0")
    assert any(isinstance(m, QuantLinear) for m in fake.modules())
    ids = torch.randint(0, 48, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = get_adapter(fake).logits(ids), get_adapter(load_quantized(tmp_path)).logits(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_compressed_tensors_export_and_refusal(tmp_path):
    export_quantized(quantized_tiny("llada", "rtn"), tmp_path / "ct", "compressed-tensors")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["quantization_config"]["format"] == "pack-quantized"
    with pytest.raises(ValueError, match="cannot express"):
        export_quantized(quantized_tiny("llada", "flatquant"), tmp_path / "ct2", "compressed-tensors")
    with pytest.raises(ValueError, match="unknown format"):
        export_quantized(quantized_tiny("llada", "rtn"), tmp_path / "x", "gguf")
