"""nonzero_known: nonzero's indices from a known count, by nonzero_static or, where a device has no kernel for it
(CUDA before torch 2.6), by nonzero itself."""
import pytest
import torch

from faircalib import nonzero


@pytest.mark.parametrize("shape", [(0,), (1,), (17,), (3, 33), (2, 5, 7)])
@pytest.mark.parametrize("static_kernel", [True, False])
def test_indices_are_nonzeros_in_row_major_order(gen, monkeypatch, shape, static_kernel):
    if not static_kernel:  # the path CUDA tensors take with torch < 2.6
        monkeypatch.setattr(nonzero, "_WITHOUT_STATIC_KERNEL", {"cpu"})
    mask = torch.rand(shape, generator=gen) < 0.4
    got = nonzero.nonzero_known(mask, int(mask.sum()))
    assert got.dtype == torch.int64
    assert torch.equal(got, mask.nonzero())


def test_all_false_and_all_true_masks(monkeypatch):
    for static_kernel in (set(), {"cpu"}):
        monkeypatch.setattr(nonzero, "_WITHOUT_STATIC_KERNEL", static_kernel)
        assert nonzero.nonzero_known(torch.zeros(4, 6, dtype=torch.bool), 0).shape == (0, 2)
        assert torch.equal(nonzero.nonzero_known(torch.ones(4, 6, dtype=torch.bool), 24),
                           torch.ones(4, 6).nonzero())
