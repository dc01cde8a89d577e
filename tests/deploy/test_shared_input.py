"""Linked W4A4Linears of one input (q/k/v, gate/up): one quantization and one GEMM per input, eager and compiled,
with the outputs of unlinked linears; changes after linking, unlinking, copies."""
import copy

import pytest
import torch
from torch import nn

from faircalib.deploy.shared_input import share_input_quantization, shared_input_groups
from faircalib.deploy.w4a4_linear import W4A4Linear, convert_to_w4a4, keep_weights_unpacked
from faircalib.models import get_adapter

from .conftest import count_kernel_calls, linears_of_one_input, one_gemm_per_linear, quantized_tiny


def _unlinked(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, W4A4Linear):
            share_input_quantization([m])
    return twin


def test_convert_links_the_linears_of_each_input(family):
    deployed = quantized_tiny(family, "flatquant")
    convert_to_w4a4(deployed)
    adapter = get_adapter(deployed)
    for block in adapter.blocks:
        lin = adapter.linears(block)
        assert lin["q"].shared_input is lin["k"].shared_input is lin["v"].shared_input is not None
        assert lin["gate"].shared_input is lin["up"].shared_input is not None
        assert lin["q"].shared_input is not lin["gate"].shared_input
        assert lin["o"].shared_input is None and lin["down"].shared_input is None
        assert torch.equal(lin["q"].act_clip, lin["v"].act_clip) and torch.equal(lin["q"].left, lin["k"].left)


@pytest.mark.parametrize("method", ["rtn", "flatquant"])
def test_a_forward_quantizes_each_input_once(family, method, monkeypatch):
    deployed = quantized_tiny(family, method)
    convert_to_w4a4(deployed)
    separate = _unlinked(deployed)
    calls = count_kernel_calls(monkeypatch)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = get_adapter(deployed).logits(ids)
        assert len(calls) == 4 * len(get_adapter(deployed).blocks)  # q/k/v, o, gate/up, down
        want = get_adapter(separate).logits(ids)
        assert len(calls) == 4 * 2 + 7 * 2
    assert torch.equal(got, want)  # the same codes: linking changes the work, not the numbers


GEMMS = ("w4a4_matmul", "w4a4_matmul_stacked", "w4a4_matmul_swiglu", "int8_matmul")
# Per block: q/k/v stacked, o, gate/up with the SwiGLU in the GEMM's epilogue, down
PACKED_GEMMS = ["w4a4_matmul_stacked", "w4a4_matmul", "w4a4_matmul_swiglu", "w4a4_matmul"]


def test_each_shared_input_takes_one_gemm(family, monkeypatch):
    """q/k/v and gate/up: one GEMM on their stacked weights (gate/up's with the SwiGLU in its epilogue), the same
    logits as a GEMM per linear (reference kernels: the same numbers); `swiglu_epilogue = False` gives the plain
    stacked GEMM for gate/up, `fused_gemm = False` a GEMM per member."""
    deployed = quantized_tiny(family, "flatquant")
    convert_to_w4a4(deployed)
    adapter = get_adapter(deployed)
    unfused = one_gemm_per_linear(deployed)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    calls = count_kernel_calls(monkeypatch, GEMMS)
    with torch.no_grad():
        got = adapter.logits(ids)
        blocks = len(adapter.blocks)
        assert sorted(calls) == sorted(PACKED_GEMMS * blocks)
        calls.clear()
        assert torch.equal(get_adapter(unfused).logits(ids), got)
        assert calls == ["w4a4_matmul"] * 7 * blocks
        groups = shared_input_groups(deployed)
        assert len(groups) == 2 * blocks  # q/k/v and gate/up of every block
        for group in groups:
            group.swiglu_epilogue = False
        calls.clear()
        assert torch.equal(adapter.logits(ids), got)
        assert sorted(calls) == sorted(["w4a4_matmul_stacked", "w4a4_matmul"] * 2 * blocks)


def test_unlinking_a_member_drops_the_kept_stack(gen):
    """A member that leaves a group with kept int8 weights stacked: the remaining members no longer run the stack
    (its rows include the one that left), each gives its own output."""
    q, k, v = linears_of_one_input(gen)
    share_input_quantization([q, k, v])
    keep_weights_unpacked(nn.ModuleList([q, k, v]))
    x = torch.randn(2, 96, generator=gen)
    with torch.no_grad():
        want = [m(x) for m in (q, k, v)]
        share_input_quantization([v])  # v leaves: q and k stay linked
        assert q.shared_input is k.shared_input and v.shared_input is None
        assert all(torch.equal(m(x), w) for m, w in zip((q, k, v), want))


def test_kept_int8_weights_are_stacked_per_input(monkeypatch):
    """`keep_weights_unpacked(model)` keeps each group's int8 copies as slices of one tensor, so a group still runs
    one GEMM (`int8_matmul` on the stack), bitwise equal to the packed path; a member whose packed weight changes
    unpacks again and the group falls back to a GEMM per member (stale stack released); copies keep the link;
    keep=False returns to the packed stacked GEMM."""
    deployed = quantized_tiny("dream", "flatquant")
    convert_to_w4a4(deployed)
    adapter = get_adapter(deployed)
    blocks = len(adapter.blocks)
    ids = torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    calls = count_kernel_calls(monkeypatch, GEMMS)
    with torch.no_grad():
        want = adapter.logits(ids)
        keep_weights_unpacked(deployed)
        calls.clear()
        assert torch.equal(adapter.logits(ids), want)
        assert calls == ["int8_matmul"] * 4 * blocks
        mlp = adapter.linears(adapter.blocks[0])
        gate, up = mlp["gate"], mlp["up"]
        assert gate.weight_int8._base is up.weight_int8._base is gate.shared_input._kept[0]

        twin = copy.deepcopy(deployed)
        calls.clear()
        assert torch.equal(get_adapter(twin).logits(ids), want) and calls == ["int8_matmul"] * 4 * blocks

        changed = copy.deepcopy(deployed)
        keep_weights_unpacked(changed, False)
        adapter_changed = get_adapter(changed)
        adapter_changed.linears(adapter_changed.blocks[0])["gate"].weight_packed.zero_()
        gate.weight_packed.zero_()  # in place: gate unpacks again, its copy is no longer the stack's slice
        calls.clear()
        assert torch.equal(adapter.logits(ids), adapter_changed.logits(ids))
        assert calls.count("int8_matmul") == 4 * blocks + 1  # block 0's gate and up: one GEMM each
        assert gate.shared_input._kept is None and up.weight_int8 is not None

        keep_weights_unpacked(deployed, False)
        assert all(m.weight_int8 is None for m in deployed.modules() if isinstance(m, W4A4Linear))
        calls.clear()
        adapter.logits(ids)
        assert sorted(calls) == sorted(PACKED_GEMMS * blocks)

        int8_only = copy.deepcopy(twin)  # the int8 codes alone: still stacked, one GEMM per input
        keep_weights_unpacked(int8_only, drop_packed=True)
        adapter_int8 = get_adapter(int8_only)
        mlp = adapter_int8.linears(adapter_int8.blocks[0])
        assert mlp["gate"].packed_dropped and mlp["gate"].weight_int8._base is mlp["gate"].shared_input._kept[0]
        calls.clear()
        assert torch.equal(adapter_int8.logits(ids), want) and calls == ["int8_matmul"] * 4 * blocks


def test_group_gemm_slices_equal_the_members_outputs(gen, monkeypatch):
    q, k, v = linears_of_one_input(gen, n_sizes=(40, 7, 17))
    k.bias = None  # a member without a bias: zeros in the stacked epilogue
    separate = [copy.deepcopy(m) for m in (q, k, v)]
    share_input_quantization([q, k, v])
    calls = count_kernel_calls(monkeypatch, GEMMS)
    x = torch.randn(2, 5, 96, generator=gen)
    with torch.no_grad():
        got = [m(x) for m in (q, k, v)]
        assert calls == ["w4a4_matmul_stacked"]
        assert [tuple(y.shape) for y in got] == [(2, 5, 40), (2, 5, 7), (2, 5, 17)]
        assert all(torch.equal(y, s(x)) for y, s in zip(got, separate))
        assert torch.equal(q(x[:, :0]), separate[0](x[:, :0]))  # no tokens
        calls.clear()
        with torch.inference_mode():  # inference tensors are not memoized: a GEMM per member, the same outputs
            x = x.clone()
            assert all(torch.equal(m(x), y) for m, y in zip((q, k, v), got))
        assert calls == ["w4a4_matmul"] * 3
    x = torch.randn(3, 96, generator=gen)
    with torch.no_grad():
        q(x)
        for m in (v, separate[2]):
            m.weight_scale.mul_(2.0)  # a weight changed in place after q's call: the stacked GEMM is computed again
        assert torch.equal(v(x), separate[2](x))
        v.weight_scale = torch.ones(3)
        with pytest.raises(ValueError, match="weight_scale \\(3,\\) or bias of a 17-output member"):
            q(torch.randn(2, 96, generator=gen))


def test_a_modified_or_different_input_is_quantized_again(gen, monkeypatch):
    q, k, v = linears_of_one_input(gen)
    separate = [copy.deepcopy(m) for m in (q, k, v)]
    share_input_quantization([q, k, v])
    calls = count_kernel_calls(monkeypatch)
    x = torch.randn(5, 96, generator=gen)
    with torch.no_grad():
        q(x)
        x.mul_(4.0)
        got_k = k(x)
        assert len(calls) == 2
        twin = x.clone()
        got_v = v(twin)
        assert len(calls) == 3
        assert torch.equal(got_k, separate[1](x)) and torch.equal(got_v, separate[2](twin))
        y = torch.randn(5, 96, generator=gen)
        assert [torch.equal(m(y), s(y)) for m, s in zip((q, k, v), separate)] == [True] * 3
    assert len(calls) == 3 + 2 + 1 + 3  # the two unlinked checks, one for the linked readers of y, three unlinked


def test_members_that_differ_are_refused(gen):
    q, k, v = linears_of_one_input(gen)
    with torch.no_grad():
        k.act_clip.fill_(0.5)
    with pytest.raises(ValueError, match=r"\(q, k, v\) cannot share one activation quantization: act_clip of "
                                         r"member 1 differs from member 0 \(0.5 vs 0.8"):
        share_input_quantization([q, k, v], names=["q", "k", "v"])
    with torch.no_grad():
        k.act_clip.copy_(q.act_clip)
        v.left[0, 0] += 1e-6
    with pytest.raises(ValueError, match="left of member 2 differs"):
        share_input_quantization([q, k, v])
    other = W4A4Linear(64, 8)
    with pytest.raises(ValueError, match="in_features of member 1"):
        share_input_quantization([q, other])
    assert q.shared_input is None and k.shared_input is None


def test_a_member_changed_after_linking_is_checked_again(gen):
    q, k, v = linears_of_one_input(gen)
    share_input_quantization([q, k, v])
    x = torch.randn(3, 96, generator=gen)
    with torch.no_grad():
        q(x)
        k.act_clip.fill_(0.5)  # only one member: the codes would differ
        with pytest.raises(ValueError, match="no longer agree: act_clip of member 1"):
            k(x)
        for m in (q, v):
            m.act_clip.fill_(0.5)  # every member: linked again, the new clip used
        want = copy.deepcopy(k)
        share_input_quantization([want])
        assert torch.equal(k(x), want(x)) and torch.equal(q(x), _unlinked(q)(x))


def test_unlinking_a_member_leaves_the_others_linked(gen):
    q, k, v = linears_of_one_input(gen)
    share_input_quantization([q, k, v])
    group = q.shared_input
    share_input_quantization([v])
    assert v.shared_input is None and q.shared_input is k.shared_input is group and group.members == [q, k]
    with torch.no_grad():
        v.act_clip.fill_(0.3)
        x = torch.randn(2, 96, generator=gen)
        assert torch.equal(q(x), _unlinked(q)(x)) and torch.equal(v(x), _unlinked(v)(x))


def test_a_group_pickled_before_the_group_gemm_loads_with_it_on(gen):
    q, k, v = linears_of_one_input(gen)
    share_input_quantization([q, k, v])
    state = q.shared_input.__getstate__()
    del state["fused_gemm"]
    old = q.shared_input.__class__.__new__(q.shared_input.__class__)
    old.__setstate__(state)
    assert old.fused_gemm is True


def test_copies_are_linked_among_themselves(gen):
    q, k, v = linears_of_one_input(gen)
    share_input_quantization([q, k, v])
    model = nn.ModuleList([q, k, v])
    twin = copy.deepcopy(model)
    assert twin[0].shared_input is twin[2].shared_input is not q.shared_input
    assert twin[0].shared_input.members == list(twin)
    x = torch.randn(2, 96, generator=gen)
    with torch.no_grad():
        assert all(torch.equal(a(x), b(x)) for a, b in zip(model, twin))


@pytest.mark.parametrize("unpacked,int8_only", [(False, False), (True, False), (True, True)])
def test_compiled_blocks_quantize_each_input_once(monkeypatch, unpacked, int8_only):
    import torch._dynamo

    deployed = quantized_tiny("llada", "flatquant")
    convert_to_w4a4(deployed)
    # kept int8 weights (with the packed ones, or alone): int8_matmul on the stacks, still no graph breaks
    keep_weights_unpacked(deployed, unpacked, drop_packed=int8_only)
    adapter = get_adapter(deployed)
    ids = torch.randint(0, 48, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = adapter.logits(ids)
        torch._dynamo.reset()
        for block in adapter.blocks:
            block.compile(backend="aot_eager")
        adapter.logits(ids)  # compiles
        calls = count_kernel_calls(monkeypatch)
        got = adapter.logits(ids)
    assert len(calls) == 4 * len(adapter.blocks)  # q/k/v, o, gate/up, down: as in eager
    calls = count_kernel_calls(monkeypatch, GEMMS)
    with torch.no_grad():
        adapter.logits(ids)
    # one GEMM per shared input, as in eager: on the packed weights, or on the stacked int8 copies
    assert sorted(set(calls)) == (["int8_matmul"] if unpacked else
                                  ["w4a4_matmul", "w4a4_matmul_stacked", "w4a4_matmul_swiglu"])
    assert len(calls) == 4 * len(adapter.blocks)
    assert torch.equal(got, want)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert all(group._handed is None for group in shared_input_groups(deployed))


def _mlp(deployed):
    adapter = get_adapter(deployed)
    lin = adapter.linears(adapter.blocks[0])
    return lin["gate"], lin["up"], lin["down"]


def test_swiglu_epilogue_folds_the_down_channel_scale_where_its_pass_would_round_alike():
    """`SharedInputQuantization.swiglu`: down's channel scale is folded into the epilogue for fp32 inputs or factors
    of the input's dtype (its own pass would round the scaled input to that dtype too), not for bf16 inputs with
    fp32 factors (that pass multiplies in fp32 inside the kernel); either way `layers.swiglu_mlp` gives the logits
    of the SwiGLU after the GEMM (reference kernels), and down then skips or applies the scale itself."""
    deployed = quantized_tiny("dream", "flatquant")
    convert_to_w4a4(deployed)
    gate, up, down = _mlp(deployed)
    assert down.channel_scale is not None
    x = torch.randn(2, 3, gate.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h, scaled = gate.shared_input.swiglu(gate, up, down, x)
        want = torch.nn.functional.silu(gate(x)) * up(x)
        assert scaled and torch.equal(h, want * down.channel_scale)
        assert torch.equal(down.forward_scaled(h), down(want))
        xb = x.to(torch.bfloat16)
        h, scaled = gate.shared_input.swiglu(gate, up, down, xb)  # fp32 factors, bf16 input
        assert not scaled and torch.equal(h, torch.nn.functional.silu(gate(xb)) * up(xb))


def test_swiglu_epilogue_is_skipped_where_it_does_not_apply(monkeypatch):
    """None (the SwiGLU after the GEMM) with the switch off, with a down projection that takes gate and up itself
    (`fuse_swiglu`) or shares its input, with kept int8 weights, and for a group other than (gate, up)."""
    deployed = quantized_tiny("llada", "flatquant")
    convert_to_w4a4(deployed)
    gate, up, down = _mlp(deployed)
    group = gate.shared_input
    x = torch.randn(4, gate.in_features, generator=torch.Generator().manual_seed(0))
    assert group.swiglu(gate, up, down, x) is not None
    assert group.swiglu(up, gate, down, x) is None
    group.swiglu_epilogue = False
    assert group.swiglu(gate, up, down, x) is None
    group.swiglu_epilogue = True
    down.fuse_swiglu = True
    assert group.swiglu(gate, up, down, x) is None
    down.fuse_swiglu = False
    keep_weights_unpacked(deployed)
    assert group.swiglu(gate, up, down, x) is None
    keep_weights_unpacked(deployed, False)
    assert group.swiglu(gate, up, nn.Linear(up.out_features, 3), x) is None
    twin = copy.deepcopy(deployed)  # a copy keeps the switch; one pickled before it existed gets it on
    assert _mlp(twin)[0].shared_input.swiglu_epilogue
    state = group.__getstate__()
    del state["swiglu_epilogue"]
    group.__setstate__(state)
    assert group.swiglu_epilogue
