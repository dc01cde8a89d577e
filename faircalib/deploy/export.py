"""One entry point for `faircalib calibrate ... --export faircalib|compressed-tensors`.

`export_quantized(model, directory, fmt, fingerprint)` takes a calibrated model (QuantLinears) or an already
deployed one (W4A4Linears), converts a copy when needed (the caller keeps its fake-quant model), and writes the
chosen format: "faircalib" (`checkpoint.save_quantized`, everything including online transforms) or
"compressed-tensors" (`compressed_tensors.export_compressed_tensors`, which refuses what that format cannot express).
`check_exportable(method, qconfig, fmt)` says the same refusals from the recipe alone, before a calibration runs.
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
from faircalib.calib.methods import Method
from faircalib.calib.quant_linear import quantized_linears
from faircalib.config import ROLES, QuantConfig
from faircalib.deploy.checkpoint import save_quantized
from faircalib.deploy.compressed_tensors import export_compressed_tensors
from faircalib.deploy.w4a4_linear import MAX_WEIGHT_BITS, convert_to_w4a4, deploy_refusal

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
            first = model.get_submodule(kept[0])
            raise ValueError(f"faircalib.deploy.export_quantized: {len(kept)} quantized linear(s) are not W4A4-"
                             f"deployable (e.g. {kept[0]}: {deploy_refusal(first.weight_spec, first.act_spec)}); "
                             f"keep the fake-quant checkpoint for them, or quantize W4A4 per channel")
    if fmt == "faircalib":
        return save_quantized(model, directory, fingerprint=fingerprint)
    return export_compressed_tensors(model, directory)


def check_exportable(method: Method, qconfig: QuantConfig, fmt: str) -> None:
    """Raise ValueError when `export_quantized(..., fmt)` would refuse what calibrating with `method` and `qconfig`
    yields, so that `calibrate --export` fails before the calibration rather than after it."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"faircalib.deploy.check_exportable: unknown format {fmt!r}; choose one of {EXPORT_FORMATS}")
    quantized = {role: specs for role in ROLES if (specs := qconfig.specs(role)) != (None, None)}
    refusals = {}  # reason -> the roles it applies to
    for role, specs in quantized.items():
        reason = deploy_refusal(*specs)
        if reason is not None:
            refusals.setdefault(reason, []).append(role)
    if refusals:
        found = "; ".join(f"{reason} in {', '.join(roles)}" for reason, roles in refusals.items())
        raise ValueError(f"faircalib.deploy: export {fmt!r} writes W4A4 linears, and the recipe has {found}; W4A4 "
                         f"needs symmetric per-channel weights of <= {MAX_WEIGHT_BITS} bits and quantized activations "
                         f"(wbits 4, abits 4, group size -1)")
    if fmt == "compressed-tensors":
        if method.transform != "none":
            raise ValueError(f"faircalib.deploy: method {method.name!r} puts online input transforms ("
                             f"{method.transform}) before some linears, which the compressed-tensors int W4A4 format "
                             f"cannot express; export 'faircalib' instead, or calibrate with method 'rtn'")
        act_bits = {specs[1].bits for specs in quantized.values()}
        if act_bits != {4}:
            raise ValueError(f"faircalib.deploy: the compressed-tensors int W4A4 format has 4-bit activations, and the "
                             f"recipe quantizes them to {sorted(act_bits)} bits; export 'faircalib' instead")


def copy_tokenizer_files(source: str | os.PathLike, directory: str | os.PathLike) -> list[str]:
    """Copy the TOKENIZER_FILES that checkpoint directory `source` holds into `directory` (each written to a
    temporary name, then renamed); returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            atomic.write_file(Path(directory) / name, lambda tmp: shutil.copyfile(Path(source) / name, tmp))
            copied.append(name)
    return copied
