"""Native LLaDA and Dream models, their adapter, and checkpoint loading (see docs/design.md, "Models")."""
from faircalib.models.adapter import ROLES, Adapter, get_adapter
from faircalib.models.build import build_random, make_config
from faircalib.models.dream import DreamConfig, DreamModel
from faircalib.models.llada import LLaDAConfig, LLaDAModelLM
from faircalib.models.loading import load_model, load_tokenizer, save_model

__all__ = [
    "ROLES",
    "Adapter",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAModelLM",
    "build_random",
    "get_adapter",
    "load_model",
    "load_tokenizer",
    "make_config",
    "save_model",
]
