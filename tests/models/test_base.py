"""The shared model plumbing (`faircalib.models.base`): block keyword arguments under a CUDA graph capture."""
import torch

from faircalib.models import base, get_adapter
from tests.models.conftest import tiny_model


def test_a_captured_forward_takes_the_masked_path_without_reading_the_mask(family, monkeypatch):
    ids = torch.randint(0, 50, (2, 11), generator=torch.Generator().manual_seed(0))
    ones = torch.ones(2, 11, dtype=torch.bool)
    adapter = get_adapter(tiny_model(family))
    assert adapter.block_kwargs(ids, ones)["attention_mask"] is None  # eager: all ones, the unmasked path
    with torch.no_grad():
        want = adapter.logits(ids, None)

    def no_host_read(self, *args, **kwargs):
        raise AssertionError("the mask was read on the host during a capture")

    monkeypatch.setattr(base, "capturing_cuda_graph", lambda: True)
    monkeypatch.setattr(torch.Tensor, "all", no_host_read)
    kwargs = adapter.block_kwargs(ids, ones)
    assert kwargs["attention_mask"].shape == (2, 1, 1, 11) and bool(kwargs["attention_mask"].min())
    with torch.no_grad():
        torch.testing.assert_close(adapter.logits(ids, ones), want)
