"""The activation-path kernels compiled for a real GPU against the CPU reference. The interpreter runs the same
source but not Triton's code generation: a variant that split the columns into two MMA blocks passed under the
interpreter and was miscompiled on H100 with Triton 3.6 (wrong codes, an illegal address). Runs only with a CUDA
device and TRITON_INTERPRET=0:

    TRITON_INTERPRET=0 python -m pytest -q tests/kernels/test_gemm_cuda.py
"""
import dataclasses
import warnings

import pytest
import torch
import triton

from faircalib import kernels
from faircalib.kernels import gemm, gemm_reference as ref, registry

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or registry.triton_interpreted(),
                                reason="needs a CUDA device and TRITON_INTERPRET=0")


def _orthogonal(n, gen):
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0].float()


# (n1, n2): stacked tokens (b1 < 64), one token per step, padded columns, the split-column kernel (64x148,
# 128x148), and LLaDA/Dream's K = 3584, 4096, 12288, 18944.
@pytest.mark.parametrize("n1,n2", [(16, 48), (128, 48), (64, 148), (16, 100), (56, 64), (64, 64), (96, 128),
                                   (128, 148)])
@pytest.mark.parametrize("parts,gated", [("lr", False), ("clr", False), ("r", False), ("clr", True)])
@pytest.mark.parametrize("hopper", [True, False])
def test_act_quant_on_gpu_matches_reference(monkeypatch, n1, n2, parts, gated, hopper):
    """With `ActLaunch.hopper` (on Hopper, K = 12288- and 18944-like splits take the Gluon kernels of
    `act_hopper.py`) and without it (the Triton kernels everywhere, as on other GPUs)."""
    monkeypatch.setattr(gemm, "ACT_LAUNCH", dataclasses.replace(gemm.ACT_LAUNCH, hopper=hopper))
    _check_act_quant_on_gpu(n1, n2, parts, gated)


def _check_act_quant_on_gpu(n1, n2, parts, gated):
    gen = torch.Generator().manual_seed(n1 * 1000 + n2)
    channel_scale = torch.rand(n1 * n2, generator=gen) + 0.5 if "c" in parts else None
    left = _orthogonal(n1, gen).to(torch.bfloat16) if "l" in parts else None
    right = _orthogonal(n2, gen).to(torch.bfloat16) if "r" in parts else None
    args = (channel_scale, left, right, torch.tensor(0.9), 4)
    cuda_args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    for m in (1, 3, 257):
        x = torch.randn(m, n1 * n2, generator=gen).to(torch.bfloat16)
        gate = torch.randn(m, n1 * n2, generator=gen).to(torch.bfloat16) if gated else None
        if gated:
            codes, scales = gemm.quantize_swiglu_packed(gate.cuda(), x.cuda(), *cuda_args)
            want_codes, want_scales = ref.quantize_swiglu_packed(gate, x, *args)
        else:
            codes, scales = gemm.quantize_act_packed(x.cuda(), *cuda_args)
            want_codes, want_scales = ref.quantize_act_packed(x, *args)
        codes, scales = codes.cpu(), scales.cpu()
        # bf16 factors, products rounded to bf16 between the two MMAs: scales agree to bf16 precision, codes within
        # one step where a value sits near a rounding boundary.
        torch.testing.assert_close(scales, want_scales, rtol=2e-2, atol=0)
        assert (codes.int() - want_codes.int()).abs().max() <= 1, (m, n1, n2)
        assert (codes != want_codes).float().mean() < 2e-2, (m, n1, n2)


@pytest.mark.parametrize("n1,n2", [(56, 64), (96, 128), (128, 148)])
def test_activation_launches_read_the_compiled_kernel(monkeypatch, n1, n2):
    """On the GPU `_programs` reads the compiled kernel's registers and shared memory through Triton's API (its
    fallback warning would fail here) and caps the programs per SM at what fits: 1 to 32. (The Triton kernels:
    K = 12288 would otherwise take the Gluon one, `test_act_hopper.py`.)"""
    monkeypatch.setattr(gemm, "_resident", {})
    monkeypatch.setattr(gemm, "ACT_LAUNCH", dataclasses.replace(gemm.ACT_LAUNCH, hopper=False))
    gen = torch.Generator().manual_seed(n1 + n2)
    factors = (_orthogonal(n1, gen).to(torch.bfloat16).cuda(), _orthogonal(n2, gen).to(torch.bfloat16).cuda())
    x = torch.randn(4096, n1 * n2, generator=gen).to(torch.bfloat16).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gemm.quantize_act_packed(x, None, *factors, None, 4)
    (fits,) = gemm._resident.values()
    assert 1 <= fits <= 32


TILE = gemm.ActLaunch(split_over_tile=False)


@pytest.mark.parametrize("n1,n2", [(96, 128), (48, 32), (16, 48)])
@pytest.mark.parametrize("parts,gated", [("lr", False), ("r", False), ("l", False), ("clr", False), ("clr", True)])
def test_whole_tile_or_row_split_on_gpu_matches_reference(monkeypatch, n1, n2, parts, gated):
    """Transforms that fit a whole tile but split into narrower blocks (K = 12288's 96x128 as 128 x (64 + 32),
    the split kernel on the transposed view; 16x48 by columns), and the same inputs forced into the whole tile,
    compiled for the GPU, against the CPU reference. (On Hopper K = 12288 without a channel scale takes the Gluon
    kernel, `test_act_hopper.py`; here the Triton split kernel.)"""
    monkeypatch.setattr(gemm, "ACT_LAUNCH", dataclasses.replace(gemm.ACT_LAUNCH, hopper=False))
    _check_act_quant_on_gpu(n1, n2, parts, gated)
    monkeypatch.setattr(gemm, "ACT_LAUNCH", TILE)
    _check_act_quant_on_gpu(n1, n2, parts, gated)


@pytest.mark.parametrize("n1,n2", [(96, 128), (128, 148)])
def test_chunked_kernel_on_gpu_matches_reference(n1, n2):
    """fp32 factors at K = 12288 and 18944 do not fit the whole-tile or split kernels: the chunked one (tf32 MMAs)."""
    gen = torch.Generator().manual_seed(n1 + n2)
    args = (torch.rand(n1 * n2, generator=gen) + 0.5, _orthogonal(n1, gen), _orthogonal(n2, gen), None, 4)
    assert not gemm.fused_transform_supported(n1, n2, torch.float32)
    assert gemm.act_path(n1, n2, torch.float32) == "chunked"
    x = torch.randn(130, n1 * n2, generator=gen).to(torch.bfloat16)
    codes, scales = gemm.quantize_act_packed(x.cuda(), *(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    want_codes, want_scales = ref.quantize_act_packed(x, *args)
    # tf32 MMAs: 10-bit mantissas, a little closer to the fp32 reference than bf16 factors (the test above).
    torch.testing.assert_close(scales.cpu(), want_scales, rtol=1e-2, atol=0)
    assert (codes.cpu().int() - want_codes.int()).abs().max() <= 1
    assert (codes.cpu() != want_codes).float().mean() < 1e-2


@pytest.mark.parametrize("gated", [False, True])
def test_compiled_split_transform_matches_eager(gated):
    """K = 18944 with bf16 factors under torch.compile (Inductor): the channel scale (and SwiGLU) computed in the
    graph instead of by `gemm.scaled_input`. Without a gate the product is the same fp32 product rounded to bf16, so
    the codes are bitwise eager's; with one, Inductor keeps silu(gate)·x in fp32 where eager rounds it to bf16."""
    import torch._dynamo

    gen = torch.Generator().manual_seed(7)
    n1, n2 = 128, 148
    cs = (torch.rand(n1 * n2, generator=gen) + 0.5).cuda()
    left, right = (_orthogonal(n, gen).to(torch.bfloat16).cuda() for n in (n1, n2))
    x = torch.randn(300, n1 * n2, generator=gen).to(torch.bfloat16).cuda()
    gate = torch.randn(300, n1 * n2, generator=gen).to(torch.bfloat16).cuda() if gated else None

    def quantize(x, gate):
        return kernels.quantize_act_packed(x, clip_ratio=0.9, channel_scale=cs, left=left, right=right, gate=gate)

    want_codes, want_scales = quantize(x, gate)
    torch._dynamo.reset()
    codes, scales = torch.compile(quantize, fullgraph=True)(x, gate)
    if not gated:
        assert torch.equal(codes, want_codes) and torch.equal(scales, want_scales)
        return
    torch.testing.assert_close(scales, want_scales, rtol=1e-2, atol=0)
    assert (codes.int() - want_codes.int()).abs().max() <= 1
    assert (codes != want_codes).float().mean() < 1e-2


@pytest.mark.parametrize("flatten", [True, False], ids=["flattened", "unflattened"])
@pytest.mark.parametrize("subtile", [True, False], ids=["halves", "whole"])
def test_each_gemm_loop_and_epilogue_variant_on_gpu_is_exact(monkeypatch, subtile, flatten):
    """Each (SUBTILE, FLATTEN) variant the autotuner picks among, forced on a 128 x 128 x 128 tile (3 stages): bitwise
    the reference on random codes and on worst-case ones (every product +64 over K = 18944). fp32 outputs, which
    hold these sums exactly; a 256-wide tile's whole fp32 output would not fit shared memory beside 3 stages (the
    autotuner skips such configs), so every variant runs on the 128-wide one."""
    kernel = gemm._int8_gemm_kernel
    config = next(c for c in kernel.configs if c.kwargs["BLOCK_K"] == 128)
    monkeypatch.setattr(kernel, "configs", [triton.Config(
        {**config.kwargs, "BLOCK_M": 128, "BLOCK_N": 128, "SUBTILE": subtile, "FLATTEN": flatten}, num_warps=8,
        num_stages=3, pre_hook=config.pre_hook)])
    monkeypatch.setattr(kernel, "cache", {})
    gen = torch.Generator().manual_seed(5)
    for m, n, k, extreme in ((257, 4608, 3584, False), (300, 520, 18944, True)):
        a = torch.full((m, k), -8, dtype=torch.int8) if extreme else \
            torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        codes = torch.full((n, k), -8, dtype=torch.int8) if extreme else \
            torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
        w = ref.pack_weight_for_gemm(codes)
        sa, sw = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen)
        got = gemm.w4a4_matmul(a.cuda(), sa.cuda(), w.cuda(), sw.cuda(), None, torch.float32).cpu()
        assert torch.equal(got, ref.w4a4_matmul(a, sa, w, sw, None, torch.float32))


@pytest.mark.parametrize("m,n,k", [(1, 40, 256), (300, 17, 200), (257, 4608, 3584), (1000, 512, 18944)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_w4a4_gemm_on_gpu_matches_reference(m, n, k, out_dtype, with_bias):
    """The autotuned GEMM (TMA-store epilogue where the output rows are 16-byte multiples, pointer stores where not,
    e.g. N = 17) against the reference: the same fp32 epilogue, bitwise equal; with a bias the compiler may fuse
    the last multiply and the add into one FMA (one rounding fewer), so within an ulp of the output dtype."""
    gen = torch.Generator().manual_seed(m + n + k)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = ref.pack_weight_for_gemm(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8))
    sa, sw = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    want = ref.w4a4_matmul(a, sa, w, sw, bias, out_dtype)
    got = gemm.w4a4_matmul(a.cuda(), sa.cuda(), w.cuda(), sw.cuda(), None if bias is None else bias.cuda(),
                           out_dtype).cpu()
    if bias is None:
        assert torch.equal(got, want)
    else:
        ulp = torch.finfo(out_dtype).eps
        torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=ulp * want.float().abs().max().item())


def _regs_or_skip():
    if gemm.gemm_regs is None or not gemm.gemm_regs.supported(torch.device("cuda")):
        pytest.skip("the register-unpack GEMM needs Gluon and an sm_90 GPU")


# (m, n, k): one token, odd sizes (K not a multiple of 16: a padded copy of the codes; N not a multiple of the tile),
# Dream's widths, the worst case (every product +64 over K = 18944), and more token blocks than a launch group
# (`gemm_regs.GROUP_M`) with a partial last group and block.
@pytest.mark.parametrize("m,n,k,extreme", [(1, 40, 256, False), (7, 17, 200, False), (257, 4608, 3584, False),
                                           (130, 520, 18944, True), (1157, 300, 512, False)])
@pytest.mark.parametrize("design", list(gemm.REGS_DESIGNS))
@pytest.mark.parametrize("with_bias", [False, True])
def test_register_unpack_gemm_on_gpu_matches_reference(monkeypatch, m, n, k, extreme, design, with_bias):
    """Each config of the register-unpack design (`gemm_regs`) against the reference, fp32 output: bitwise without a
    bias (the int32 sums and the fp32 epilogue are the reference's), within an ulp with one (a fused multiply-add)."""
    _regs_or_skip()
    monkeypatch.setattr(gemm, "W4A4_DESIGN", design)
    gen = torch.Generator().manual_seed(m + n + k)
    a = torch.full((m, k), -8, dtype=torch.int8) if extreme else torch.randint(-8, 8, (m, k), generator=gen,
                                                                              dtype=torch.int8)
    codes = torch.full((n, k), -8, dtype=torch.int8) if extreme else torch.randint(-8, 8, (n, k), generator=gen,
                                                                                  dtype=torch.int8)
    w = ref.pack_weight_for_gemm(codes)
    sa, sw = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen)
    bias = torch.randn(n, generator=gen) if with_bias else None
    want = ref.w4a4_matmul(a, sa, w, sw, bias, torch.float32)
    got = gemm.w4a4_matmul(a.cuda(), sa.cuda(), w.cuda(), sw.cuda(), None if bias is None else bias.cuda(),
                           torch.float32).cpu()
    _assert_same_epilogue(got, want, bias)


# Stacks: Dream's q/k/v; member widths off the 128-row tile (a member's last tile is partial, the next member's
# first tile starts on its own); gate/up-like two; four weights (two launches, the second from column 330). 1157
# tokens: a partial last launch group of token blocks (`gemm_regs.GROUP_M`) and a partial last block.
@pytest.mark.parametrize("widths,with_bias", [((3584, 512, 512), False), ((200, 17, 113), True), ((130, 300), False),
                                              ((64, 1, 129, 136), True)])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_register_unpack_stack_equals_the_unpack_design(monkeypatch, widths, with_bias, out_dtype):
    """A stack of weights run by the register design (one launch per up to three weights, each into its columns) in
    16-bit outputs: the unpack pass + INT8 GEMM's stacked result (`_assert_same_epilogue`); and the design picked per
    shape (every candidate timed from a CUDA graph, none failing: a warning is an error here) is one of them."""
    _regs_or_skip()
    gen = torch.Generator().manual_seed(sum(widths))
    a = torch.randint(-8, 8, (1157, 3584), generator=gen, dtype=torch.int8).cuda()
    sa = torch.rand(1157, 1, generator=gen).cuda()
    ws = [ref.pack_weight_for_gemm(torch.randint(-8, 8, (n, 3584), generator=gen, dtype=torch.int8)).cuda()
          for n in widths]
    sw = torch.rand(sum(widths), generator=gen).cuda()
    bias = torch.randn(sum(widths), generator=gen).cuda() if with_bias else None
    outs = {}
    for design in ("unpack", *gemm.REGS_DESIGNS):
        monkeypatch.setattr(gemm, "W4A4_DESIGN", design)
        outs[design] = gemm.w4a4_matmul_stacked(a, sa, ws, sw, bias, out_dtype)
    for design in gemm.REGS_DESIGNS:
        _assert_same_epilogue(outs[design], outs["unpack"], bias)
    monkeypatch.setattr(gemm, "W4A4_DESIGN", None)
    monkeypatch.setattr(gemm, "_designs", {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gemm.w4a4_design(a, sa, ws, sw, bias, out_dtype) in outs
    _assert_same_epilogue(gemm.w4a4_matmul_stacked(a, sa, ws, sw, bias, out_dtype), outs["unpack"], bias)


# SwiGLU widths: one 64-channel tile, off the tile (200, 1000), LLaDA's 12288; tokens: 1, 7, 300, and 1157 (a
# partial last group of token blocks and a partial last block)
@pytest.mark.parametrize("m,k,f", [(1, 4096, 64), (7, 1024, 200), (1157, 3584, 1000), (300, 128, 12288)])
@pytest.mark.parametrize("with_bias,with_cs,out_dtype", [(False, True, torch.bfloat16), (True, False, torch.float16),
                                                         (False, True, torch.float32)])
def test_swiglu_gemm_on_gpu_matches_reference(m, k, f, with_bias, with_cs, out_dtype):
    """The register kernel with the SwiGLU in its epilogue (`gemm_regs._swiglu_tile`) against the reference (the
    stacked GEMM's halves, then F.silu(gate) * up and the channel scale as eager PyTorch rounds them, on the CPU).
    The kernel's exp is not PyTorch's, so silu may differ in the last fp32 bits: in 16-bit outputs at least 99.5% of
    the values are bitwise equal, and all are within 4 ulps of the output dtype."""
    _regs_or_skip()
    gen = torch.Generator().manual_seed(m + k + f)
    w_gate, w_up = (ref.pack_weight_for_gemm(torch.randint(-8, 8, (f, k), generator=gen, dtype=torch.int8))
                    for _ in range(2))
    args = (torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8), torch.rand(m, 1, generator=gen) / k,
            w_gate, w_up, torch.rand(2 * f, generator=gen), torch.randn(2 * f, generator=gen) if with_bias else None,
            torch.rand(f, generator=gen) + 0.5 if with_cs else None, out_dtype)
    want = ref.w4a4_matmul_swiglu(*args).float()
    got = gemm.w4a4_matmul_swiglu(*(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)).cpu().float()
    eps = torch.finfo(out_dtype).eps
    torch.testing.assert_close(got, want, rtol=4 * eps, atol=4 * eps * want.abs().max().item())
    if out_dtype != torch.float32:
        assert (got == want).float().mean().item() >= 0.995


def test_swiglu_in_epilogue_where_the_register_kernel_runs():
    _regs_or_skip()
    cuda = torch.device("cuda")
    assert kernels.swiglu_in_epilogue(cuda, 18944) and gemm.swiglu_in_epilogue(cuda, 18944)
    assert not gemm.swiglu_in_epilogue(cuda, gemm.gemm_regs.MAX_K)  # the 16x int32 sums would overflow
    with kernels.use_backend("reference"):
        assert not kernels.swiglu_in_epilogue(cuda, 18944)


def _assert_same_epilogue(got, want, bias):
    """Bitwise without a bias (same int32 sums, same fp32 products); within an ulp of the output dtype with one
    (whether the compiler fuses the bias add into a multiply-add may differ between kernels)."""
    if bias is None:
        assert torch.equal(got, want)
    else:
        ulp = torch.finfo(want.dtype).eps
        torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=ulp * want.float().abs().max().item())
