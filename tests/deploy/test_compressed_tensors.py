"""compressed-tensors export: bit-exact pack-quantized layout, read back by the package's own decompressor."""
import json

import pytest
import torch

# A test dependency (`pip install -e ".[dev]"`, as CI does); a machine without it skips this file, not the run.
pytest.importorskip("compressed_tensors", reason="compressed-tensors is not installed (pip install -e '.[dev]')")
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationConfig  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from faircalib.deploy.compressed_tensors import export_compressed_tensors, pack_quantized_weight  # noqa: E402
from faircalib.deploy.w4a4_linear import W4A4Linear, convert_to_w4a4  # noqa: E402

from .conftest import quantized_tiny  # noqa: E402


@pytest.mark.parametrize("k", [1, 7, 32, 100, 129])
def test_packing_is_the_packages_own(gen, k):
    codes = torch.randint(-8, 8, (5, k), generator=gen, dtype=torch.int8)
    packed = pack_quantized_weight(codes)
    assert torch.equal(packed, pack_to_int32(codes, 4))
    assert torch.equal(unpack_from_int32(packed, 4, torch.Size([5, k])), codes)


def test_export_round_trips_through_the_decompressor(tmp_path, family):
    model = quantized_tiny(family, "rtn")
    convert_to_w4a4(model)
    export_compressed_tensors(model, tmp_path, scale_dtype=torch.float32)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    scheme = QuantizationConfig.model_validate(qc).config_groups["group_0"]
    assert scheme.input_activations.dynamic and scheme.input_activations.strategy == "token"
    tensors = load_file(tmp_path / "model.safetensors")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, W4A4Linear)}
    assert len(linears) == 14
    for name, module in linears.items():
        local = {key.rpartition(".")[2]: t for key, t in tensors.items() if key.rpartition(".")[0] == name}
        assert local["weight_packed"].dtype == torch.int32
        weight = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        want = module.weight_codes().float() * module.weight_scale[:, None]
        assert torch.equal(weight.float(), want), name
    assert not any(key.endswith("weight_packed") for key in tensors if key.rpartition(".")[0] in qc["ignore"])


def test_refuses_online_transforms_and_clips(tmp_path):
    model = quantized_tiny("llada", "flatquant")
    convert_to_w4a4(model)
    with pytest.raises(ValueError, match="online transform part 'left'.*save_quantized"):
        export_compressed_tensors(model, tmp_path)
    rtn = quantized_tiny("llada", "rtn")
    convert_to_w4a4(rtn)
    next(m for m in rtn.modules() if isinstance(m, W4A4Linear)).act_clip.fill_(0.9)
    with pytest.raises(ValueError, match="activation clip ratio 0.9000"):
        export_compressed_tensors(rtn, tmp_path)
