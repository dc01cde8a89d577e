"""The two model families, their configs, and `build_random` for untrained models of any size.

A family is chosen by the config's `model_type` ("llada"; "Dream" or "dream"). Shipped configs of the published
models live in `configs/` ("llada-8b", "dream-7b"), so GPU benchmarks can build a real-sized model with random
weights without downloading anything.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel

from faircalib.models.dream import DreamConfig, DreamModel
from faircalib.models.llada import LLaDAConfig, LLaDAModelLM

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]


FAMILIES = {
    "llada": Family("llada", LLaDAConfig, LLaDAModelLM),
    "dream": Family("dream", DreamConfig, DreamModel),
}


def family_of(model_type: str | None) -> Family:
    """model_type as written in config.json ("llada", "Dream", "dream") -> its Family."""
    family = FAMILIES.get(str(model_type).lower())
    if family is None:
        raise ValueError(
            f"faircalib.models: model_type {model_type!r} is not a native family; expected one of "
            f"{sorted(FAMILIES)} (LLaDA: 'llada', Dream: 'Dream'). Other dLLMs load with trust_remote_code=True."
        )
    return family


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def read_config_dict(config: dict | str | Path) -> dict:
    """A config dict, a shipped name ("llada-8b"), a config.json path or a checkpoint directory -> dict."""
    if isinstance(config, dict):
        return dict(config)
    path = Path(config)
    if not path.exists() and (CONFIG_DIR / f"{config}.json").exists():
        path = CONFIG_DIR / f"{config}.json"
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"faircalib.models: no config at {config!r}; pass a dict, a config.json path, a checkpoint directory "
            f"or one of the shipped names {shipped_configs()}."
        )
    return json.loads(path.read_text())


def make_config(config: dict | str | Path | PretrainedConfig, family: str | None = None) -> PretrainedConfig:
    """Any config form -> the family's config object. `family` (if given) must agree with model_type."""
    if isinstance(config, PretrainedConfig):
        chosen = family_of(config.model_type)
        if family is not None and family_of(family) is not chosen:
            raise ValueError(f"faircalib.models: config is a {chosen.name} config but family={family!r} was asked")
        return config
    values = read_config_dict(config)
    model_type = values.get("model_type", family)
    if family is not None and family_of(model_type) is not family_of(family):
        raise ValueError(
            f"faircalib.models: config has model_type {model_type!r} but family={family!r} was asked; drop one."
        )
    chosen = family_of(model_type)
    values.pop("model_type", None)
    return chosen.config_class(**values)


def build_random(
    family: str | None,
    config: dict | str | Path | PretrainedConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> PreTrainedModel:
    """An untrained model of the family with freshly drawn weights, built without a CPU fp32 detour.

    Modules are created on the meta device and materialised directly on `device` in `dtype`, so the published
    8B config costs only its bf16 weights on the GPU. `device="meta"` returns the shapes without memory.
    `generator` must live on `device`; by default a fresh one seeded with 0 (results are reproducible).
    """
    config = make_config(config, family)
    with torch.device("meta"):
        model = family_of(config.model_type).model_class(config)
    model = model.to(dtype=dtype)
    device = torch.device(device)
    if device.type != "meta":
        model = model.to_empty(device=device)
        model.retie_()
        if generator is None:
            generator = torch.Generator(device).manual_seed(0)
        model.initialize_(generator)
    return model.eval()

