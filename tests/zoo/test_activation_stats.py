import pytest
import torch

from faircalib.models import ROLES, get_adapter
from faircalib.zoo.activation_stats import activation_stats


def test_one_record_per_block_and_role(small_model, gen):
    ids = torch.randint(3, 40, (3, 10), generator=gen)
    stats = activation_stats(small_model, ids)
    blocks = len(get_adapter(small_model).blocks)
    assert [(s["block"], s["role"]) for s in stats] == [(b, r) for b in range(blocks) for r in ROLES]
    for s in stats:
        assert s["max"] >= s["median"] > 0 and s["ratio"] == pytest.approx(s["max"] / s["median"])
    by_role = {(s["block"], s["role"]): s for s in stats}
    assert by_role[(0, "q")]["max"] == by_role[(0, "k")]["max"] == by_role[(0, "v")]["max"]  # one shared input


def test_padding_is_left_out(small_model, gen):
    ids = torch.randint(3, 40, (1, 10), generator=gen)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 10, dtype=torch.bool)], dim=1)
    plain, masked = activation_stats(small_model, ids), activation_stats(small_model, padded, mask)
    for a, b in zip(plain, masked):
        assert a["max"] == pytest.approx(b["max"], rel=1e-5) and a["median"] == pytest.approx(b["median"], rel=1e-5)
