"""Load and save checkpoints: shipped tiny models, published LLaDA/Dream directories, remote-code dLLMs.

A local directory with config.json and safetensors (one `model.safetensors`, or shards listed in
`model.safetensors.index.json`) loads into the native implementation chosen by `model_type`; no remote code
runs. Every tensor is checked by name, shape and dtype (floating point) from the safetensors headers before any
weight is read, and the load fails loudly (naming the tensors) if anything is missing, unexpected or mis-shaped:
some transformers versions silently leave published dLLM weights randomly initialised, and a half-loaded model
must never reach calibration.
"""
import json
import os
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from faircalib import atomic
from faircalib.models.adapter import get_adapter
from faircalib.models.base import BlockwiseLM
from faircalib.models.build import family_of, make_config, read_config_dict
from faircalib.zoo import SHIPPED, checkpoint_dir

# Stored tensors a native model does not need: rotary caches that some exports persist. Matched by suffix.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Generic PretrainedConfig keys that the published LLaDA/Dream config.json files do carry.
GENERIC_KEYS_KEPT = ("model_type", "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")
_LIST_LIMIT = 20


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """"tiny-llada" / "tiny-dream" -> the shipped directory; anything else must be a local checkpoint directory."""
    path = checkpoint_dir(str(name_or_path)) if str(name_or_path) in SHIPPED else Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"faircalib.models.loading: {name_or_path!r} is not a checkpoint directory (no config.json in {path}); "
            f"pass {' or '.join(SHIPPED)} or a local directory with config.json and *.safetensors."
        )
    return path


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
) -> nn.Module:
    """A checkpoint -> model in eval mode on `device` in `dtype`, every tensor verified. A packed W4A4 checkpoint
    (`quantization_config.quant_method == "faircalib"`) goes to `faircalib.deploy.load_quantized`.

    Native (default): config `model_type` "llada" or "Dream" selects LLaDAModelLM or DreamModel.
    trust_remote_code=True: `AutoModel.from_pretrained(path, trust_remote_code=True)` for other dLLMs that follow
    one of the two module layouts (checked by the adapter); transformers' own loading report must be clean.
    """
    path = resolve_checkpoint(name_or_path)
    config_dict = read_config_dict(path)
    quantization = config_dict.get("quantization_config")
    if quantization is not None:  # every command takes --model: a packed W4A4 checkpoint loads as what it is
        if quantization.get("quant_method") == "faircalib":
            from faircalib.deploy.checkpoint import load_quantized

            return load_quantized(path, dtype, device)
        raise ValueError(f"faircalib.models.loading: {path} holds a {quantization.get('quant_method')!r} quantized "
                         f"checkpoint; faircalib loads dense checkpoints and its own packed W4A4 format (quant_method "
                         f"'faircalib', written by `faircalib calibrate --export faircalib`)")
    if trust_remote_code:
        return _load_remote(path, dtype, device)
    config = make_config(config_dict)
    files = safetensors_files(path)
    with torch.device("meta"):
        model = family_of(config.model_type).model_class(config)
    expected = expected_tensors(model)
    stored = stored_shapes(files)
    check_tensors(path, expected, stored)
    tensors = read_tensors(files, expected, dtype, torch.device(device))
    model.load_state_dict(tensors, strict=False, assign=True)
    model.retie_()
    left_on_meta = [name for name, t in _named_tensors(model) if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"faircalib.models.loading: {path}: tensors not loaded: {_short(left_on_meta)}")
    return model.eval()


def expected_tensors(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a checkpoint must store (tied copies excluded)."""
    tied = model.tied_weights()
    return {name: tuple(t.shape) for name, t in model.state_dict().items() if name not in tied}


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's weight files: model.safetensors, else the shards named by the index, else *.safetensors."""
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"faircalib.models.loading: {index} names shards that are not there: {missing}")
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"faircalib.models.loading: no *.safetensors in {path}; convert .bin/.pt weights to safetensors first."
        )
    return files


def stored_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype string) from the safetensors headers, without reading any weight."""
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                view = handle.get_slice(name)
                shapes[name] = (tuple(view.get_shape()), view.get_dtype())
    return shapes


def check_tensors(path: Path, expected: dict, stored: dict) -> None:
    """Raise one error listing every missing, unexpected, mis-shaped or non-float tensor."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(n for n in set(stored) - set(expected) if not n.endswith(IGNORED_SUFFIXES))
    wrong_shape = [f"{n}: stored {stored[n][0]}, model needs {expected[n]}"
                   for n in sorted(set(expected) & set(stored)) if stored[n][0] != expected[n]]
    not_float = [f"{n}: {stored[n][1]}" for n in sorted(set(expected) & set(stored))
                 if stored[n][1] not in ("F64", "F32", "F16", "BF16")]
    problems = [f"{label} ({len(names)}): {_short(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape),
                 ("not floating point", not_float)) if names]
    if problems:
        raise ValueError(
            f"faircalib.models.loading: checkpoint {path} does not match its config.json: " + "; ".join(problems)
            + ". Check that config.json belongs to these weights (sizes, weight_tying / tie_word_embeddings)."
        )


def read_tensors(files: list[Path], names: dict, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Read the named tensors, converting each to `dtype` on `device` as it is read (peak memory ~ one tensor)."""
    tensors = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():
                if name in names:
                    tensors[name] = handle.get_tensor(name).to(device=device, dtype=dtype)
    return tensors


def save_model(model: nn.Module, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write config.json and model.safetensors into `directory` (created if needed), each file atomically.

    dtype=torch.float16 (or bfloat16) stores a smaller copy; None keeps the parameters' dtype. Tied copies are not
    stored (as in the published checkpoints). Other files in the directory (a tokenizer) are left alone.
    """
    if not isinstance(model, BlockwiseLM):
        raise TypeError(
            f"faircalib.models.loading.save_model writes native LLaDA/Dream models, got {type(model).__name__}; "
            "save remote-code models with model.save_pretrained(directory)."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tied = model.tied_weights()
    state = {name: t.detach().to(dtype=dtype or t.dtype, device="cpu").contiguous()
             for name, t in model.state_dict().items() if name not in tied}
    config = _family_keys(model.config)
    config["architectures"] = [type(model).__name__]
    atomic.write_file(directory / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic.write_json(directory / "config.json", config, sort_keys=True)
    return directory


def _family_keys(config: transformers.PretrainedConfig) -> dict:
    """The config as the published files write it: the family's own keys, without the dozens of generic
    transformers settings (id2label, num_beams, ...) whose set differs between transformers versions."""
    generic = transformers.PretrainedConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if k not in generic or k in GENERIC_KEYS_KEPT}


def load_tokenizer(name_or_path: str | os.PathLike):
    """The character tokenizer stored with a checkpoint (tokenizer.json), via faircalib.zoo.tokenizer."""
    from faircalib.zoo.tokenizer import CharTokenizer

    return CharTokenizer.load(resolve_checkpoint(name_or_path))


def _load_remote(path: Path, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    from transformers import AutoModel

    # transformers renamed torch_dtype to dtype in 4.56.
    dtype_key = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
    model, info = AutoModel.from_pretrained(
        str(path), trust_remote_code=True, output_loading_info=True, **{dtype_key: dtype}
    )
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        raise ValueError(f"faircalib.models.loading: remote-code load of {path} was incomplete: {problems}")
    get_adapter(model)
    return model.to(device).eval()


def _named_tensors(model: nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()


def _short(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f", ... ({len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else "")


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)
