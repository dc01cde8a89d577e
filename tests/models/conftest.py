"""Tiny configs of both families for the model tests (sizes small enough for milliseconds on CPU)."""
import json
from contextlib import contextmanager

import pytest
import torch

from faircalib.models import build_random
from faircalib.models.build import CONFIG_DIR

TINY = {
    "llada": {
        "model_type": "llada", "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 96,
        "vocab_size": 50, "embedding_size": 64, "rope_theta": 10000.0, "mask_token_id": 49, "eos_token_id": 48,
        "pad_token_id": 48, "max_sequence_length": 128,
    },
    "dream": {
        "model_type": "Dream", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 50, "rope_theta": 10000.0,
        "mask_token_id": 49, "pad_token_id": 48, "eos_token_id": 48, "bos_token_id": 48,
    },
}

# The published config.json files, shrunk to tiny sizes; every other key (the names a real checkpoint carries) kept.
SHRINK = {
    "llada-8b": {"d_model": 48, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 80,
                 "vocab_size": 60, "embedding_size": 64, "mask_token_id": 59, "eos_token_id": 58, "pad_token_id": 58},
    "dream-7b": {"hidden_size": 56, "num_attention_heads": 7, "num_key_value_heads": 1, "num_hidden_layers": 2,
                 "intermediate_size": 74, "vocab_size": 60, "mask_token_id": 59, "pad_token_id": 58,
                 "bos_token_id": 58, "eos_token_id": 58},
}
FAMILY_OF = {"llada-8b": "llada", "dream-7b": "dream"}



def shrunk_published(name: str) -> dict:
    config = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    config.update(SHRINK[name])
    return config


def tiny_model(family: str, seed: int = 0, **overrides):
    return build_random(family, {**TINY[family], **overrides}, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=["llada", "dream"])
def family(request):
    return request.param


@pytest.fixture(params=["llada-8b", "dream-7b"])
def published(request):
    return request.param


def random_ids(gen: torch.Generator, batch: int = 2, length: int = 11, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=gen)


@contextmanager
def lm_head_rows(adapter):
    """Within the block: the list of row counts (positions) the adapter's LM head ran on, one entry per call."""
    seen = []
    hook = adapter.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[:-1].numel()))
    try:
        yield seen
    finally:
        hook.remove()
