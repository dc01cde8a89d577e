"""Packed W4A4 checkpoints: `save_quantized(model, dir)` and `load_quantized(dir) -> model`.

A checkpoint is a native model directory (`faircalib.models.save_model`: config.json + model.safetensors) whose
block linears are `W4A4Linear` modules, stored as their buffers (`<name>.weight_packed` int8 in the GEMM layout,
`.weight_scale`, `.bias`, `.act_clip`, `.channel_scale`, `.left`, `.right`), plus in config.json:

    "quantization_config": {"quant_method": "faircalib", "format": "w4a4-packed", "format_version": 1,
                            "version": <faircalib version>, "fingerprint": <calibration fingerprint>,
                            "weight_layout": "split-nibble-k128", "sha256": <of model.safetensors>,
                            "modules": {<name>: {"in_features", "out_features", "bias", "act_bits",
                                                 "left_size", "right_size", "channel_scale"}}}

Each file is written atomically (model.safetensors first, config.json last). Loading checks the checksum before
reading (a corrupted or truncated file fails with a clear error), warns when the checkpoint was written by another
faircalib version, builds the model on the meta device, swaps in the W4A4Linear modules, and verifies every
tensor's name, shape and dtype before reading weights. Every linear stores its own `act_clip` and transform
buffers; the linears of one input (q/k/v, gate/up) hold equal ones and are linked after loading so the input is
quantized once (`w4a4_linear.share_model_input_quantization`; checkpoints from before that, with one clip per
linear, still load and run unlinked, with a warning).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

import faircalib
from faircalib import atomic
from faircalib.deploy.shared_input import share_model_input_quantization
from faircalib.deploy.w4a4_linear import W4A4Linear
from faircalib.models.build import family_of, make_config, read_config_dict
from faircalib.models.loading import expected_tensors, save_model, stored_shapes

QUANT_METHOD = "faircalib"
FORMAT = "w4a4-packed"
FORMAT_VERSION = 1
WEIGHT_LAYOUT = "split-nibble-k128"
WEIGHTS = "model.safetensors"
# Buffers stored in their own dtype; every other tensor is cast to the load dtype, the factors to the factor dtype.
_EXACT_DTYPES = {"weight_packed": "I8", "weight_scale": "F32", "act_clip": "F32", "channel_scale": "F32",
                 "left": "F32", "right": "F32"}
FACTORS = ("left", "right")


def factor_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The transform factors' dtype in a model run in `dtype`: a 16-bit dtype itself (the activation kernels' MMAs
    then run on 16-bit operands, twice tf32's rate: on H100 a LLaDA-8B step ran 1.17x bf16 with bf16 factors and
    1.04x with fp32 ones, BENCHMARKS.md), else fp32 as stored. Codes then differ from the fp32 reference by one
    step in ~0.4% of elements instead of ~0.05% (values on rounding boundaries)."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def _module_spec(module: W4A4Linear) -> dict:
    return {"in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None,
            "act_bits": module.act_bits, "channel_scale": module.channel_scale is not None,
            "left_size": None if module.left is None else module.left.shape[0],
            "right_size": None if module.right is None else module.right.shape[0]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_quantized(model: nn.Module, directory: str | os.PathLike, fingerprint: str = "") -> Path:
    """Write a W4A4 model (block linears already `W4A4Linear`, see `convert_to_w4a4`) as a packed checkpoint."""
    modules = {name: _module_spec(m) for name, m in model.named_modules() if isinstance(m, W4A4Linear)}
    if not modules:
        raise ValueError("faircalib.deploy.save_quantized: the model holds no W4A4Linear; convert it first with "
                         "faircalib.deploy.convert_to_w4a4(model)")
    leftover = [name for name, m in model.named_modules() if type(m).__name__ == "QuantLinear"]
    if leftover:
        raise ValueError(f"faircalib.deploy.save_quantized: {len(leftover)} QuantLinear module(s) are not deployable "
                         f"as W4A4 (e.g. {leftover[0]}); save the fake-quant model instead, or quantize them W4A4")
    stored_dtypes = {"I8": torch.int8, "F32": torch.float32}
    wrong = [f"{name}.{leaf}: {getattr(m, leaf).dtype}" for name, m in model.named_modules()
             if isinstance(m, W4A4Linear) for leaf, want in _EXACT_DTYPES.items()
             if getattr(m, leaf, None) is not None and getattr(m, leaf).dtype != stored_dtypes[want]]
    if wrong:
        raise ValueError(f"faircalib.deploy.save_quantized: the format stores codes as int8 and scales, clips and "
                         f"transform factors as fp32, but {len(wrong)} buffer(s) differ (e.g. {wrong[:3]}): save the "
                         f"model from convert_to_w4a4, or one loaded with load_quantized(..., factor_dtype="
                         f"torch.float32) (16-bit factors would lose their low bits)")
    directory = save_model(model, directory)
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD, "format": FORMAT, "format_version": FORMAT_VERSION,
        "version": faircalib.__version__, "fingerprint": fingerprint, "weight_layout": WEIGHT_LAYOUT,
        "sha256": _sha256(directory / WEIGHTS), "modules": modules}
    atomic.write_json(directory / "config.json", config, sort_keys=True)
    return directory


def read_quantization_config(directory: str | os.PathLike) -> dict:
    """The checkpoint's quantization_config, checked for method and format; warns on a faircalib version change."""
    directory = Path(directory)
    config = read_config_dict(directory)
    qc = config.get("quantization_config")
    if not qc or qc.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"faircalib.deploy.load_quantized: {directory} is not a faircalib W4A4 checkpoint "
                         f"(config.json quantization_config is {qc!r}); load dense checkpoints with "
                         f"faircalib.load_model")
    if qc.get("format") != FORMAT or qc.get("format_version") != FORMAT_VERSION or \
            qc.get("weight_layout") != WEIGHT_LAYOUT:
        raise ValueError(f"faircalib.deploy.load_quantized: {directory} has format {qc.get('format')!r} v"
                         f"{qc.get('format_version')} layout {qc.get('weight_layout')!r}; this faircalib reads "
                         f"{FORMAT!r} v{FORMAT_VERSION} {WEIGHT_LAYOUT!r}: re-export with this version")
    if qc.get("version") != faircalib.__version__:
        warnings.warn(f"faircalib.deploy.load_quantized: {directory} was written by faircalib {qc.get('version')}, "
                      f"this is {faircalib.__version__}; the packed format matches, but check outputs", stacklevel=3)
    return qc


def check_checksum(path: str | os.PathLike, sha256: str | None) -> None:
    """ValueError unless the file's sha256 is the one config.json recorded (catches corruption and truncation)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"faircalib.deploy.load_quantized: {path} is missing; the checkpoint is incomplete")
    if _sha256(path) != sha256:
        raise ValueError(f"faircalib.deploy.load_quantized: {path} is corrupted or truncated (sha256 differs from "
                         f"the one in config.json, {path.stat().st_size} bytes on disk); re-export the checkpoint")


def _check_weights_file(path: Path, qc: dict) -> dict:
    """Checksum and header of model.safetensors -> stored (shape, dtype) per name; clear errors when damaged."""
    check_checksum(path, qc.get("sha256"))
    try:
        return stored_shapes([path])
    except SafetensorError as error:
        raise ValueError(f"faircalib.deploy.load_quantized: {path} is not a readable safetensors file ({error}); "
                         f"re-export the checkpoint") from error


def _check_against(path: Path, expected: dict, stored: dict) -> None:
    problems = sorted(set(expected) ^ set(stored))
    problems += [f"{n}: stored {stored[n][0]}, model needs {expected[n]}" for n in sorted(set(expected) & set(stored))
                 if stored[n][0] != expected[n]]
    problems += [f"{n}: stored {stored[n][1]}, needs {_EXACT_DTYPES[n.rsplit('.', 1)[-1]]}" for n in stored
                 if n.rsplit(".", 1)[-1] in _EXACT_DTYPES and n in expected
                 and stored[n][1] != _EXACT_DTYPES[n.rsplit(".", 1)[-1]]]
    if problems:
        raise ValueError(f"faircalib.deploy.load_quantized: {path} does not match its config.json "
                         f"({len(problems)} problem(s)): {problems[:10]}")


def build_skeleton(config: dict, modules: dict) -> nn.Module:
    """The native model of `config` on the meta device with the listed modules replaced by W4A4Linear."""
    config = dict(config)
    config.pop("quantization_config", None)
    hf_config = make_config(config)
    with torch.device("meta"):
        model = family_of(hf_config.model_type).model_class(hf_config)
        swap_w4a4_modules(model, modules)
    return model


def swap_w4a4_modules(model: nn.Module, modules: dict) -> None:
    """Replace each named module by an (uninitialised) W4A4Linear of its stored spec."""
    for name, spec in modules.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if not hasattr(parent, leaf):
            raise ValueError(f"faircalib.deploy.load_quantized: config lists module {name!r}, which the "
                             f"{type(model).__name__} architecture does not have")
        setattr(parent, leaf, W4A4Linear(**spec))


def load_quantized(directory: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", factor_dtype: torch.dtype | None = None) -> nn.Module:
    """A packed checkpoint -> model in eval mode on `device` whose block linears are W4A4Linear, the linears of
    each input group linked to quantize their input once. Dense tensors (embeddings, norms, LM head, biases) are
    cast to `dtype`; codes, scales, clips and channel scales keep their stored dtypes (int8, fp32). The transform
    factors (left, right) take `factor_dtype`, by default `factor_dtype_for(dtype)`: `dtype` when it is 16-bit."""
    factor_dtype = factor_dtype_for(dtype) if factor_dtype is None else factor_dtype
    if not factor_dtype.is_floating_point:
        raise ValueError(f"faircalib.deploy.load_quantized: factor_dtype must be a float dtype, got {factor_dtype}")
    directory = Path(directory)
    qc = read_quantization_config(directory)
    stored = _check_weights_file(directory / WEIGHTS, qc)
    model = build_skeleton(read_config_dict(directory), qc["modules"])
    expected = expected_tensors(model)
    _check_against(directory / WEIGHTS, expected, stored)
    tensors = {}
    with safe_open(str(directory / WEIGHTS), framework="pt", device="cpu") as handle:
        for name in expected:
            t = handle.get_tensor(name)
            leaf = name.rsplit(".", 1)[-1]
            if leaf in FACTORS:
                tensors[name] = t.to(device, factor_dtype)
            else:
                exact = leaf in _EXACT_DTYPES or not t.is_floating_point()
                tensors[name] = t.to(device=device) if exact else t.to(device, dtype)
    model.load_state_dict(tensors, strict=False, assign=True)  # names checked above; tied copies are not stored
    model.retie_()
    on_meta = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if on_meta:
        raise RuntimeError(f"faircalib.deploy.load_quantized: {directory}: tensors not loaded: {on_meta[:10]}")
    share_model_input_quantization(model)  # q/k/v and gate/up quantize their shared input once
    return model.eval()
