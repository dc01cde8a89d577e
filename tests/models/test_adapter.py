"""The adapter on both families: roles, norms, head, shifted logits, block-by-block runs, layout detection."""
import pytest
import torch
from torch import nn

from faircalib.models import ROLES, build_random, get_adapter
from faircalib.models.adapter import align_logits

from .conftest import FAMILY_OF, lm_head_rows, random_ids, shrunk_published, tiny_model


def test_linears_by_role_have_the_block_shapes(family):
    adapter = get_adapter(tiny_model(family))
    linears = adapter.linears(adapter.blocks[1])
    assert tuple(linears) == ROLES
    assert all(isinstance(m, nn.Linear) for m in linears.values())
    d = 64
    assert linears["q"].weight.shape == (d, d) and linears["o"].weight.shape == (d, d)
    assert linears["gate"].weight.shape == (96, d) and linears["up"].weight.shape == (96, d)
    assert linears["down"].weight.shape == (d, 96)
    kv_width = 64 if family == "llada" else 32  # tiny Dream has 2 KV heads of 16
    assert linears["k"].weight.shape == (kv_width, d) and linears["v"].weight.shape == (kv_width, d)


def test_llada_head_is_never_a_down_projection():
    model = tiny_model("llada")
    adapter = get_adapter(model)
    assert adapter.lm_head is model.model.transformer.ff_out
    assert adapter.lm_head.weight.shape == (64, 64)  # [embedding_size, d_model]
    downs = [adapter.linears(block)["down"] for block in adapter.blocks]
    assert all(down is block.ff_out for down, block in zip(downs, adapter.blocks))
    assert all(down is not adapter.lm_head for down in downs)
    assert adapter.linear_name(1, "down") == "model.transformer.blocks.1.ff_out"
    assert dict(model.named_modules())[adapter.linear_name(1, "down")] is downs[1]


def test_names_and_norms_follow_the_checkpoints(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    modules = dict(model.named_modules())
    for role in ROLES:
        assert modules[adapter.linear_name(0, role)] is adapter.linears(adapter.blocks[0])[role]
    attn_norm, mlp_norm = adapter.norms(adapter.blocks[0])
    expected = ("attn_norm", "ff_norm") if family == "llada" else ("input_layernorm", "post_attention_layernorm")
    assert (attn_norm, mlp_norm) == tuple(getattr(adapter.blocks[0], n) for n in expected)
    assert adapter.embed is model.get_input_embeddings()
    assert adapter.final_norm is (model.model.transformer.ln_f if family == "llada" else model.model.norm)
    assert adapter.mask_token_id == 49
    assert adapter.shift_logits is (family == "dream")


def test_block_by_block_equals_the_full_forward(family, gen):
    model = tiny_model(family)
    adapter = get_adapter(model)
    ids = random_ids(gen)
    kwargs = adapter.block_kwargs(ids)
    hidden = adapter.embed_inputs(ids)
    for block in adapter.blocks:
        hidden = block(hidden, **kwargs)
    raw = model(ids).logits
    aligned = adapter.head(hidden)
    torch.testing.assert_close(aligned, align_logits(raw, adapter.shift_logits), atol=0, rtol=0)
    torch.testing.assert_close(adapter.logits(ids), aligned, atol=0, rtol=0)


def test_dream_logits_are_aligned_by_one_position(gen):
    model = tiny_model("dream")
    ids = random_ids(gen)
    raw = model(ids).logits
    aligned = get_adapter(model).logits(ids)
    torch.testing.assert_close(aligned[:, 1:], raw[:, :-1], atol=0, rtol=0)
    torch.testing.assert_close(aligned[:, 0], raw[:, 0], atol=0, rtol=0)


def test_llada_logits_are_not_shifted(gen):
    model = tiny_model("llada")
    ids = random_ids(gen)
    torch.testing.assert_close(get_adapter(model).logits(ids), model(ids).logits, atol=0, rtol=0)


def test_left_padding_leaves_real_positions_unchanged(family, gen):
    model = tiny_model(family)
    adapter = get_adapter(model)
    ids = random_ids(gen, batch=1, length=9)
    padded = torch.cat([torch.full((1, 4), 48), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    alone = adapter.logits(ids)
    batched = adapter.logits(padded, attention_mask=mask)[:, 4:]
    # Dream's aligned position 0 of the real text takes its own logits; after padding it takes the pad's.
    start = 1 if family == "dream" else 0
    torch.testing.assert_close(batched[:, start:], alone[:, start:], atol=1e-5, rtol=1e-5)


def test_padding_tokens_do_not_leak_into_real_positions(family, gen):
    adapter = get_adapter(tiny_model(family))
    ids = random_ids(gen, batch=1, length=10)
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    other = ids.clone()
    other[:, 7:] = (ids[:, 7:] + 5) % 50
    a, b = adapter.logits(ids, mask), adapter.logits(other, mask)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=1e-6)


def test_set_linear_replaces_the_module_in_the_model(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    block = adapter.blocks[0]
    for role in ("q", "down"):
        replacement = nn.Linear(adapter.linears(block)[role].in_features, adapter.linears(block)[role].out_features)
        adapter.set_linear(block, role, replacement)
        assert adapter.linears(block)[role] is replacement
        assert dict(model.named_modules())[adapter.linear_name(0, role)] is replacement
    with pytest.raises(KeyError, match="unknown role 'ff'"):
        adapter.set_linear(block, "ff", nn.Identity())


def test_adapters_on_published_configs_shrunk(published, gen):
    model = build_random(FAMILY_OF[published], shrunk_published(published), generator=gen)
    adapter = get_adapter(model)
    assert adapter.family == FAMILY_OF[published] and len(adapter.blocks) == 2
    ids = random_ids(gen, vocab=60)
    assert adapter.logits(ids).shape == (2, 11, 64 if published == "llada-8b" else 60)
    assert adapter.mask_token_id == 59


def test_unsupported_architecture_lists_the_tree():
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
            self.wpe = nn.Embedding(8, 4)

    class GPTLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = Decoder()

    with pytest.raises(ValueError) as error:
        get_adapter(GPTLike())
    message = str(error.value)
    assert "unsupported architecture GPTLike" in message
    assert "transformer: Decoder" in message and "wpe: Embedding" in message and "0: Linear" in message
    assert "1: Linear" not in message  # lists are shortened to their first entry
    assert "model.transformer.blocks" in message and "model.layers" in message


def test_logits_at_rows_equal_the_full_logits_there(family, gen):
    adapter = get_adapter(tiny_model(family))
    ids = random_ids(gen)
    rows = torch.rand(ids.shape, generator=gen) < 0.5
    rows[0, 0] = rows[1, -1] = True  # Dream reads position 0's own row, the last from the one before
    full = adapter.logits(ids)
    torch.testing.assert_close(adapter.logits_at(ids, None, rows), full[rows], atol=1e-6, rtol=0)
    # with the count read already (a sampler's one read-back per step): the places without a wait, the same rows
    torch.testing.assert_close(adapter.logits_at(ids, None, rows, count=int(rows.sum())), full[rows], atol=1e-6,
                               rtol=0)
    assert adapter.logits_at(ids, None, torch.zeros_like(rows)).shape == (0, full.shape[-1])
    assert adapter.logits_at(ids, None, torch.zeros_like(rows), count=0).shape == (0, full.shape[-1])


def test_logits_at_runs_the_lm_head_on_the_selected_rows_only(family, gen):
    adapter = get_adapter(tiny_model(family))
    ids = random_ids(gen)
    rows = torch.zeros(ids.shape, dtype=torch.bool)
    rows[:, 3:6] = True
    with lm_head_rows(adapter) as seen:
        adapter.logits_at(ids, None, rows)
    assert seen == [6]


def test_logits_at_refuses_rows_of_another_shape(gen):
    adapter = get_adapter(tiny_model("llada"))
    ids = random_ids(gen)
    with pytest.raises(ValueError, match=r"rows must be a bool mask of the input's shape \(2, 11\), got "
                                         r"torch.int64 \(2, 11\)"):
        adapter.logits_at(ids, None, torch.ones(ids.shape, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(2, 11\), got torch.bool \(2, 10\)"):
        adapter.logits_at(ids, None, torch.ones(2, 10, dtype=torch.bool))
