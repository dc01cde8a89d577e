"""One entry point for `faircalib calibrate ... --export faircalib|compressed-tensors`.

`export_quantized(model, directory, fmt, fingerprint)` takes a calibrated model (QuantLinears) or an already
deployed one (W4A4Linears), converts a copy when needed (the caller keeps its fake-quant model), and writes the
chosen format: "faircalib" (`checkpoint.save_quantized`, everything including online transforms) or
"compressed-tensors" (`compressed_tensors.export_compressed_tensors`, which refuses what that format cannot express).
`copy_tokenizer_files(source, directory)` puts the source checkpoint's tokenizer next to the export, so that the
exported directory loads and generates on its own.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

from torch import nn

from faircalib import atomic
from faircalib.calib.quant_linear import quantized_linears
from faircalib.deploy.checkpoint import save_quantized
from faircalib.deploy.compressed_tensors import export_compressed_tensors
from faircalib.deploy.w4a4_linear import convert_to_w4a4

EXPORT_FORMATS = ("faircalib", "compressed-tensors")
# The task-suite CharTokenizer's file and the files of Hugging Face tokenizers (fast, sentencepiece, BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt")


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


def copy_tokenizer_files(source: str | os.PathLike, directory: str | os.PathLike) -> list[str]:
    """Copy the TOKENIZER_FILES that checkpoint directory `source` holds into `directory` (each written to a
    temporary name, then renamed); returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            atomic.write_file(Path(directory) / name, lambda tmp: shutil.copyfile(Path(source) / name, tmp))
            copied.append(name)
    return copied
