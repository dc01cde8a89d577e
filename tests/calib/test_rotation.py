"""QuaRot's residual rotation: folded into the weights, it leaves the model's logits unchanged (to fp32
tolerance) in both families, with non-trivial norm weights and with left padding."""
import pytest
import torch
from torch.testing import assert_close

from faircalib.calib.rotation import fold_norm_weights, rotate_residual
from faircalib.models import get_adapter
from tests.calib.conftest import calib_ids, left_padding_mask, tiny_model


def _random_norms(adapter, gen: torch.Generator) -> None:
    """Norm weights away from 1, so that folding them into the readers is actually exercised."""
    norms = [n for block in adapter.blocks for n in adapter.norms(block)] + [adapter.final_norm]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)


def _logits(adapter, ids, mask=None):
    with torch.no_grad():
        return adapter.logits(ids, mask)


def test_fold_norm_weights_keeps_logits(family, gen):
    adapter = get_adapter(tiny_model(family))
    _random_norms(adapter, gen)
    ids = calib_ids(n=2, length=10)
    before = _logits(adapter, ids)
    fold_norm_weights(adapter)
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for b in adapter.blocks for n in adapter.norms(b))
    assert_close(_logits(adapter, ids), before, rtol=1e-4, atol=1e-4)


def test_rotate_residual_keeps_logits(family, gen):
    model = tiny_model(family)
    adapter = get_adapter(model)
    _random_norms(adapter, gen)
    ids = calib_ids(n=3, length=12)
    mask = left_padding_mask(3, 12, [0, 3, 5])
    before, before_padded = _logits(adapter, ids), _logits(adapter, ids, mask)
    embed_before = adapter.embed.weight.detach().clone()
    rotation = rotate_residual(adapter, torch.Generator().manual_seed(7))
    q = rotation.matrix()
    assert_close(q @ q.t(), torch.eye(q.shape[0]), rtol=0, atol=1e-5)
    assert_close(adapter.embed.weight, embed_before @ q, rtol=1e-5, atol=1e-5)  # the residual stream lives in x·Q
    assert not torch.allclose(adapter.embed.weight, embed_before, atol=1e-3)
    assert_close(_logits(adapter, ids), before, rtol=1e-4, atol=1e-4)
    real = mask[:, :, None].expand_as(before_padded)
    assert_close(_logits(adapter, ids, mask)[real], before_padded[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family, tie", [("llada", {"weight_tying": True}), ("dream", {"tie_word_embeddings": True})])
def test_tied_embeddings_are_refused_before_any_change(family, tie):
    model = tiny_model(family, **tie)
    adapter = get_adapter(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotImplementedError, match="ties its LM head to the embeddings.*Untie them first"):
        rotate_residual(adapter, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
