"""Tiny random LLaDA and Dream models over the shipped character vocabulary, for the Stage II calibration tests.

Sizes are chosen for milliseconds per forward on one CPU thread: d_model 32, two blocks, an MLP of 48 (Kronecker
factors 4x8 and 6x8, so every learned transform is non-trivial)."""
import pathlib

import pytest
import torch

from faircalib.models import build_random, save_model
from faircalib.zoo import CharTokenizer

TOKENIZER = CharTokenizer()
VOCAB = TOKENIZER.vocab_size
SPECIALS = {"mask_token_id": TOKENIZER.mask_token_id, "pad_token_id": TOKENIZER.pad_token_id,
            "eos_token_id": TOKENIZER.eos_token_id}

TINY = {
    "llada": {"model_type": "llada", "d_model": 32, "n_heads": 2, "n_kv_heads": 2, "n_layers": 2,
              "mlp_hidden_size": 48, "vocab_size": VOCAB, "embedding_size": VOCAB, "rope_theta": 10000.0,
              "max_sequence_length": 64, **SPECIALS},
    "dream": {"model_type": "Dream", "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
              "num_hidden_layers": 2, "intermediate_size": 48, "vocab_size": VOCAB, "rope_theta": 10000.0,
              "bos_token_id": TOKENIZER.eos_token_id, **SPECIALS},
}



def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A fresh random tiny model of `family`; the same seed always gives the same weights."""
    model = build_random(family, {**TINY[family], **overrides}, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def saved_tiny_checkpoint(family: str, directory) -> "pathlib.Path":
    """A tiny random model of `family` saved with the character tokenizer, as a shipped checkpoint is laid out."""
    directory = pathlib.Path(directory)
    save_model(tiny_model(family), directory)
    CharTokenizer().save(directory)
    return directory


def calib_ids(seed: int = 1, n: int = 8, length: int = 16) -> torch.Tensor:
    """Random fully observed calibration sequences [n, length] over the ordinary (non-special) characters."""
    return torch.randint(len(SPECIALS), VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def left_padding_mask(n: int, length: int, pads: list[int]) -> torch.Tensor:
    """[n, length] bool, False on the first pads[i % len(pads)] positions of row i."""
    mask = torch.ones(n, length, dtype=torch.bool)
    for i in range(n):
        mask[i, :pads[i % len(pads)]] = False
    return mask


@pytest.fixture(params=["llada", "dream"])
def family(request):
    return request.param
