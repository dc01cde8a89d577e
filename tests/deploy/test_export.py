"""`export_quantized`: the CLI's one entry point writes either format from a calibrated (fake-quant) model."""
import json

import pytest
import torch

from faircalib.calib.methods import get_method
from faircalib.calib.quant_linear import QuantLinear
from faircalib.config import QuantConfig, QuantSpec
from faircalib.deploy import EXPORT_FORMATS, check_exportable, export_quantized, load_quantized
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


@pytest.mark.parametrize("qconfig", [
    QuantConfig.w_a(4, 4), QuantConfig.w_a(3, 4), QuantConfig.w_a(4, 8), QuantConfig.w_a(8, 4),
    QuantConfig.w_a(4, None), QuantConfig.w_a(4, 4, 16), QuantConfig(weight=QuantSpec(4, symmetric=False)),
    QuantConfig(skip=("gate", "up")), QuantConfig(overrides={"down": (QuantSpec(8), QuantSpec(8))}),
], ids=str)
@pytest.mark.parametrize("method", ["rtn", "quarot", "flatquant"])
def test_check_exportable_refuses_exactly_what_the_export_refuses(tmp_path, method, qconfig):
    """`calibrate --export` asks check_exportable before calibrating; here its verdict on the recipe alone meets
    what export_quantized does with the calibrated model, for both formats."""
    model = quantized_tiny("llada", method, qconfig=qconfig)
    for fmt in EXPORT_FORMATS:
        try:
            check_exportable(get_method(method), qconfig, fmt)
            predicted = None
        except ValueError as error:
            predicted = error
        if predicted is None:
            export_quantized(model, tmp_path / fmt, fmt)
        else:
            with pytest.raises(ValueError):
                export_quantized(model, tmp_path / fmt, fmt)


def test_the_refusals_name_the_reason(tmp_path):
    with pytest.raises(ValueError, match=r"8-bit weights \(at most 4\) in down;"):
        check_exportable(get_method("rtn"), QuantConfig(overrides={"down": (QuantSpec(8), QuantSpec(8))}), "faircalib")
    with pytest.raises(ValueError, match=r"not W4A4-deployable \(e.g. .*q_proj: 8-bit weights \(at most 4\)\)"):
        export_quantized(quantized_tiny("llada", "rtn", qconfig=QuantConfig.w_a(8, 4)), tmp_path, "faircalib")
    with pytest.raises(ValueError, match=r"per-group weights \(group_size 16\) in q, k, v, o, gate, up, down"):
        check_exportable(get_method("rtn"), QuantConfig.w_a(4, 4, 16), "faircalib")
    with pytest.raises(ValueError, match=r"method 'quarot' puts online input transforms \(hadamard\)"):
        check_exportable(get_method("quarot"), QuantConfig.w_a(4, 4), "compressed-tensors")
    with pytest.raises(ValueError, match=r"has 4-bit activations, and the recipe quantizes them to \[4, 8\] bits"):
        check_exportable(get_method("rtn"), QuantConfig(overrides={"o": (QuantSpec(4), QuantSpec(8))}),
                         "compressed-tensors")
    with pytest.raises(ValueError, match="unknown format 'gguf'"):
        check_exportable(get_method("rtn"), QuantConfig.w_a(4, 4), "gguf")
