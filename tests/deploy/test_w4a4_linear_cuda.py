"""W4A4Linear on a CUDA device (skipped in CPU-only CI): with q/k/v and gate/up in one stacked GEMM per input
group, each linear's output equals its own GEMM's bitwise, and the logits (eager and compiled, gate/up's GEMM with
the SwiGLU in its epilogue) stay close to those of one GEMM per linear; with kept int8 weights (stacked per group)
they equal the packed path's bitwise."""
import pytest
import torch

from faircalib.deploy import convert_to_w4a4, shared_input_groups
from faircalib.deploy.w4a4_linear import keep_weights_unpacked
from faircalib.kernels import registry
from faircalib.models import get_adapter

from .conftest import one_gemm_per_linear, quantized_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or registry.triton_interpreted(),
                                reason="needs a CUDA device and TRITON_INTERPRET=0")


def _close(got, want):
    # The members' outputs are equal (below); attention may take another kernel for column-slice inputs, so
    # the logits agree to fp32 rounding, or a code flipped by it.
    assert (got - want).abs().max() <= 1e-2 * want.abs().max()


def test_stacked_gemms_on_cuda_equal_a_gemm_per_linear(family):
    import torch._dynamo

    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    unfused = one_gemm_per_linear(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 48, (3, 40), generator=gen).cuda()
    with torch.no_grad():
        for fused_block, block in zip(get_adapter(model).blocks, get_adapter(unfused).blocks):
            fused_lin, lin = get_adapter(model).linears(fused_block), get_adapter(unfused).linears(block)
            x = torch.randn(3, 40, fused_lin["q"].in_features, generator=gen).cuda()
            for role in ("q", "k", "v", "gate", "up"):
                assert torch.equal(fused_lin[role](x), lin[role](x)), role
        want = get_adapter(unfused).logits(ids)
        _close(get_adapter(model).logits(ids), want)
        torch._dynamo.reset()
        for m in (model, unfused):
            for block in get_adapter(m).blocks:
                block.compile()
        _close(get_adapter(model).logits(ids), get_adapter(unfused).logits(ids))


@pytest.mark.parametrize("int8_only", [False, True])
def test_kept_int8_stacks_on_cuda_equal_the_packed_path(family, int8_only):
    """Kept int8 weights, stacked per input group (with the packed weights, or alone): the same int8 operands as
    the packed path's unpacked stacks, the same GEMM, so the logits are bitwise equal to the packed path's with the
    SwiGLU after gate/up's GEMM (the int8 stacks take that path; in the GEMM's epilogue, on Hopper, silu's exp is
    not PyTorch's: close)."""
    model = quantized_tiny(family, "flatquant")
    convert_to_w4a4(model)
    model.cuda()
    ids = torch.randint(0, 48, (3, 40), generator=torch.Generator().manual_seed(0)).cuda()
    groups = shared_input_groups(model)
    with torch.no_grad():
        epilogue = get_adapter(model).logits(ids)
        for group in groups:
            group.swiglu_epilogue = False
        want = get_adapter(model).logits(ids)
        _close(epilogue, want)
        keep_weights_unpacked(model, drop_packed=int8_only)
        assert torch.equal(get_adapter(model).logits(ids), want)
