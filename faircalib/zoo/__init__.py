"""The shipped tiny dLLMs: character tokenizer, verifiable task suite, checkpoints and their training script.

Light on purpose (no model or sampler imports), so `faircalib.models` can resolve the shipped names here.
"""
from pathlib import Path

from faircalib.zoo.tasks import GEN_LENGTH, TASKS, Problem, exact_match, load_tasks
from faircalib.zoo.tokenizer import CharTokenizer

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
SHIPPED = ("tiny-llada", "tiny-dream")


def checkpoint_dir(name: str) -> Path:
    """Directory of a shipped checkpoint ("tiny-llada" or "tiny-dream")."""
    if name not in SHIPPED:
        raise ValueError(f"faircalib.zoo: no shipped model named {name!r}; choose one of {SHIPPED}")
    return CHECKPOINTS / name


__all__ = [
    "CHECKPOINTS",
    "GEN_LENGTH",
    "SHIPPED",
    "TASKS",
    "CharTokenizer",
    "Problem",
    "checkpoint_dir",
    "exact_match",
    "load_tasks",
]
