"""One entry point for `faircalib calibrate ... --export faircalib|compressed-tensors`.

`export_quantized(model, directory, fmt, fingerprint)` takes a calibrated model (QuantLinears) or an already
deployed one (W4A4Linears), converts a copy when needed (the caller keeps its fake-quant model), and writes the
chosen format: "faircalib" (`checkpoint.save_quantized`, everything including online transforms) or
"compressed-tensors" (`compressed_tensors.export_compressed_tensors`, which refuses what that format cannot express).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

from torch import nn

from faircalib.calib.quant_linear import quantized_linears
from faircalib.deploy.checkpoint import save_quantized
from faircalib.deploy.compressed_tensors import export_compressed_tensors
from faircalib.deploy.w4a4_linear import convert_to_w4a4

EXPORT_FORMATS = ("faircalib", "compressed-tensors")


def export_quantized(model: nn.Module, directory: str | os.PathLike, fmt: str = "faircalib",
                     fingerprint: str = "") -> Path:
    """Write `model` as a deployable W4A4 checkpoint in `fmt` (one of EXPORT_FORMATS); returns the directory."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"faircalib.deploy.export_quantized: unknown format {fmt!r}; choose one of {EXPORT_FORMATS}")
    if next(quantized_linears(model), None) is not None:
        model = copy.deepcopy(model)
        kept = convert_to_w4a4(model)
        if kept:
            raise ValueError(f"faircalib.deploy.export_quantized: {len(kept)} quantized linear(s) are not W4A4-"
                             f"deployable (e.g. {kept[0]}: 16-bit activations or per-group weights); keep the "
                             f"fake-quant checkpoint for them, or quantize W4A4 per channel")
    if fmt == "faircalib":
        return save_quantized(model, directory, fingerprint=fingerprint)
    return export_compressed_tensors(model, directory)
