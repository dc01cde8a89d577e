"""Export a W4A4 model to the compressed-tensors int W4A4 `pack-quantized` layout (what vLLM's W4A4 path reads).

Per block linear: `weight_packed` int32 [N, ceil(K/8)] (code + 8 as an unsigned nibble, element i at bits 4i of
its row, little-endian; the tail of the last word is zero), `weight_scale` [N, 1] (per output channel),
`weight_shape` int64 [2], `bias` if any; activations are declared dynamic per-token symmetric 4-bit. Embeddings,
norms and the LM head are written dense and listed under `ignore`. The package itself is only a test dependency:
this file writes the format by hand, and the tests read it back with the package's own decompressor.

What the format cannot express, and so what this export refuses (with the module names): an online input
transform (Kronecker factors, a Hadamard rotation or a channel scale: the weights hold its inverse, so dropping it
changes the function) and an activation clip ratio other than 1 (compressed-tensors' dynamic per-token scale is
plain absmax). Export such models in the faircalib format (`save_quantized`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from faircalib import atomic
from faircalib.deploy.w4a4_linear import W4A4Linear
from faircalib.kernels import pack_int4
from faircalib.models.loading import save_model

WEIGHTS = "model.safetensors"
CODES_PER_WORD = 8


def pack_quantized_weight(codes: torch.Tensor) -> torch.Tensor:
    """codes int8 [N, K] in [-8, 7] -> int32 [N, ceil(K/8)] in the pack-quantized layout (module doc)."""
    n, k = codes.shape
    words = -(-k // CODES_PER_WORD)
    # A padding code of -8 becomes nibble 0 after the +8 offset, as the package pads.
    padded = nn.functional.pad(codes, (0, words * CODES_PER_WORD - k), value=-8)
    # (q + 8) & 0xF == (q & 0xF) ^ 8: flip bit 3 of each two's-complement nibble pack_int4 wrote.
    nibbles = pack_int4(padded) ^ 0x88
    return nibbles.contiguous().view(torch.int32).reshape(n, words)


def unsupported(module: W4A4Linear) -> list[str]:
    """What of `module` the pack-quantized W4A4 scheme cannot express (empty when it exports exactly)."""
    reasons = [f"online transform part '{name}'" for name in ("channel_scale", "left", "right")
               if getattr(module, name) is not None]
    if module.act_clip.item() != 1.0:
        reasons.append(f"activation clip ratio {module.act_clip.item():.4f} (the format's scale is plain absmax)")
    if module.act_bits != 4:
        reasons.append(f"{module.act_bits}-bit activations (the int W4A4 scheme has 4-bit activations)")
    return reasons


def quantization_config(ignore: list[str]) -> dict:
    """The config.json `quantization_config` of an int W4A4 pack-quantized checkpoint."""
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "channel", "group_size": None,
               "dynamic": False}
    acts = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "token", "group_size": None, "dynamic": True}
    return {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                                          "output_activations": None, "format": "pack-quantized"}},
            "ignore": ignore, "kv_cache_scheme": None}


def export_compressed_tensors(model: nn.Module, directory: str | os.PathLike,
                              scale_dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write `model` (block linears already W4A4Linear) as a compressed-tensors pack-quantized checkpoint.

    Raises ValueError naming every module and feature the format cannot express (module doc). `scale_dtype`: the
    dtype of `weight_scale` (bf16, as llm-compressor writes it; fp32 keeps the scales exact)."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, W4A4Linear)}
    if not linears:
        raise ValueError("faircalib.deploy.export_compressed_tensors: the model holds no W4A4Linear; convert it "
                         "first with faircalib.deploy.convert_to_w4a4(model)")
    problems = {name: unsupported(m) for name, m in linears.items()}
    problems = {name: reasons for name, reasons in problems.items() if reasons}
    if problems:
        shown = "; ".join(f"{name}: {', '.join(reasons)}" for name, reasons in list(problems.items())[:5])
        raise ValueError(f"faircalib.deploy.export_compressed_tensors: {len(problems)} of {len(linears)} W4A4 linears "
                         f"use what the compressed-tensors int W4A4 format cannot express ({shown}"
                         f"{'; ...' if len(problems) > 5 else ''}). Export them with faircalib.deploy.save_quantized, "
                         f"or calibrate without online transforms and activation clipping (method 'rtn')")
    directory = save_model(model, directory)  # dense tensors and config.json, then replaced below
    state = {}
    for name, t in model.state_dict().items():
        owner = name.rpartition(".")[0]
        if owner not in linears:
            state[name] = t.detach().cpu().contiguous()
    for name, m in linears.items():
        state[f"{name}.weight_packed"] = pack_quantized_weight(m.weight_codes().cpu())
        state[f"{name}.weight_scale"] = m.weight_scale.detach().cpu().to(scale_dtype).reshape(-1, 1).contiguous()
        state[f"{name}.weight_shape"] = torch.tensor([m.out_features, m.in_features])
        if m.bias is not None:
            state[f"{name}.bias"] = m.bias.detach().cpu().contiguous()
    for tied in model.tied_weights():
        state.pop(tied, None)
    atomic.write_file(directory / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    config = json.loads((directory / "config.json").read_text())
    dense_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    config["quantization_config"] = quantization_config(dense_linears)
    atomic.write_json(directory / "config.json", config, sort_keys=True)
    return directory
