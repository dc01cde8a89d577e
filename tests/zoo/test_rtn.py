import torch

from faircalib.models import get_adapter
from faircalib.zoo.rtn import fake_quant_rows, rtn_w4a4


def test_fake_quant_rows_numerics():
    # absmax 14 -> scale exactly 2: 7 / 2 = 3.5 and 5 / 2 = 2.5 round half to even (4 and 2); zero rows stay zero.
    x = torch.tensor([[0.0, 0.0, 0.0], [7.0, -14.0, 5.0]])
    torch.testing.assert_close(fake_quant_rows(x, 4), torch.tensor([[0.0, 0.0, 0.0], [8.0, -14.0, 4.0]]))
    assert fake_quant_rows(x.half(), 4).dtype == torch.float16
    torch.testing.assert_close(fake_quant_rows(torch.tensor([[127.0, -1.5]]), 8), torch.tensor([[127.0, -2.0]]))


def test_rtn_w4a4_rounds_weights_and_linear_inputs(small_model, gen):
    original = {n: p.clone() for n, p in small_model.named_parameters()}
    quantized = rtn_w4a4(small_model)
    assert all(torch.equal(p, original[n]) for n, p in small_model.named_parameters())

    adapter = get_adapter(quantized)
    seen = []
    for block in adapter.blocks:
        for linear in adapter.linears(block).values():
            w = linear.weight
            assert torch.equal(fake_quant_rows(w, 4), w)  # already on the per-channel 4-bit grid
            assert max(len(row.unique()) for row in w) <= 16
            # Registered after the quantization hook, so it sees what the linear really receives.
            linear.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    ids = torch.randint(3, 40, (2, 12), generator=gen)
    quantized_logits = adapter.logits(ids)
    assert len(seen) == 7 * len(adapter.blocks)
    for x in seen:
        torch.testing.assert_close(fake_quant_rows(x, 4), x)
    assert not torch.allclose(quantized_logits, get_adapter(small_model).logits(ids))
    # Embeddings and LM head stay in full precision.
    assert torch.equal(adapter.lm_head.weight, get_adapter(small_model).lm_head.weight)
