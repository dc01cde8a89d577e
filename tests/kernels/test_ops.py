"""torch.ops.faircalib custom ops: schema, fake kernels and autograd registration (torch.library.opcheck), and a
torch.compile smoke test through forward and backward."""
import pytest
import torch

import faircalib.kernels as K
from faircalib.kernels import ops  # noqa: F401  (registers torch.ops.faircalib.*)


def _samples(gen):
    x = torch.randn(5, 12, generator=gen)
    w = torch.randn(6, 16, generator=gen)
    clip = torch.full((5, 1), 0.9)
    clip_w = torch.full((6, 2), 0.9)
    codes = torch.randint(-8, 8, (3, 7), generator=gen, dtype=torch.int8)
    return [
        ("fake_quant_act", (x.clone().requires_grad_(), clip.clone().requires_grad_(), 4)),
        ("fake_quant_act_backward", (torch.randn(5, 12, generator=gen), x, clip, 4)),
        ("fake_quant_weight", (w.clone().requires_grad_(), clip_w.clone().requires_grad_(),
                               (clip_w * 0.9).requires_grad_(), 4, 8, False)),
        ("fake_quant_weight", (w.clone().requires_grad_(), torch.tensor(0.8, requires_grad=True),
                               torch.tensor(0.8), 3, -1, True)),
        ("fake_quant_weight_backward", (torch.randn(6, 16, generator=gen), w, clip_w, clip_w, 4, 8, False)),
        ("quantize_act", (x, 4)),
        ("quantize_weight", (w, 4, 8, True)),
        ("quantize_weight", (w, 4, -1, False)),
        ("pack_int4", (codes,)),
        ("unpack_int4", (torch.randint(0, 256, (3, 4), generator=gen, dtype=torch.uint8), 7)),
    ]


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.triton_on_cpu)])
def test_opcheck_every_op(gen, backend):
    with K.use_backend(backend):
        for name, args in _samples(gen):
            torch.library.opcheck(getattr(torch.ops.faircalib, name), args)


def test_public_functions_and_custom_ops_agree(gen):
    x = torch.randn(4, 9, generator=gen)
    assert torch.equal(K.fake_quant_act(x, 4, 0.8), torch.ops.faircalib.fake_quant_act(x, torch.tensor(0.8), 4))


def test_torch_compile_traces_forward_and_backward(gen):
    # aot_eager runs Dynamo and AOTAutograd over the fake kernels and autograd formulas, which is what the ops
    # must support; Inductor's CPU code generation adds ~80 s of C++ compilation and tests nothing of ours.
    torch._dynamo.reset()
    x = torch.randn(8, 32, generator=gen)
    w = torch.randn(16, 32, generator=gen)
    clip = torch.full((8, 1), 0.9)

    def step(x, w, clip):
        y = K.fake_quant_act(x, 4, clip) @ K.fake_quant_weight(w, 4, 8).t()
        return (y ** 2).mean()

    grads = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        leaves = [t.clone().requires_grad_() for t in (x, w, clip)]
        fn(*leaves).backward()
        grads.append([t.grad for t in leaves])
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager)
