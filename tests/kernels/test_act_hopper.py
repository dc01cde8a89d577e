"""The activation path's Hopper kernel (`kernels/act_hopper.py`, Gluon). Without a GPU (CI): compiled for sm_90 by the
installed Triton in a fresh process (`gluon_offline.py`), checking its MMAs are asynchronous and that nothing
spills; where it is taken. On an sm_90 GPU: codes and scales against the CPU reference, NaN/Inf/zero tokens
included."""
import dataclasses
import json
import re

import pytest
import torch

from faircalib.kernels import gemm, gemm_reference as ref, registry
from gluon_offline import compile_cases, compile_sm90, compiled_in_fresh_process  # tests/kernels, on the path

act_hopper = gemm.act_hopper
pytestmark = pytest.mark.skipif(act_hopper is None, reason="Triton without Gluon")

# (n1, n2, dtype, clip). Row split: LLaDA's K = 12288 (rows 64 + 32), a 48 = 32 + 16 split, one 64-row block, fp16.
# Column split: Dream's K = 18944 (148 = 128 + 20 in 32), 64 rows (one warpgroup) with 80 = 64 + 16 columns, fp16.
COMPILE_CASES = [(96, 128, "bfloat16", True), (48, 64, "bfloat16", False), (64, 128, "float16", True),
                 (128, 148, "bfloat16", True), (64, 80, "float16", False)]


def _compile(n1, n2, dtype_name, has_clip):
    from triton.runtime.jit import mangle_type

    kind, ba, bb = act_hopper.layout(n1, n2)
    rows = kind == "rows"
    kernel = act_hopper._kron_quant_kernel if rows else act_hopper._kron_quant_cols_kernel
    factor = mangle_type(torch.empty(0, dtype=getattr(torch, dtype_name)))
    types = {"x_ptr": factor, "right_ptr": factor, "left_ptr": factor, "clip_ptr": "*fp32", "codes_ptr": "*i8",
             "scales_ptr": "*fp32", "M": "i32"}
    signature = {name: types.get(name, "constexpr") for name in kernel.arg_names}
    warps = (n2 if rows else n1) // 16
    stages = gemm.ACT_LAUNCH.hopper_stages if rows else gemm.ACT_LAUNCH.hopper_cols_stages
    constexprs = {"N1": n1, "N2": n2, "BA": ba, "BB": bb, "HAS_CLIP": has_clip, "BITS": 4, "STAGES": stages,
                  "num_warps": warps}
    # As a launch specializes them: 16-byte aligned pointers (vectorized copies and stores)
    attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in signature if name.endswith("_ptr")}
    return compile_sm90(kernel, signature, constexprs, attrs)


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_fresh_process(__file__)


@pytest.mark.parametrize("case", COMPILE_CASES, ids=[f"{n1}x{n2}-{d}-clip{c}" for n1, n2, d, c in COMPILE_CASES])
def test_hopper_act_kernel_compiles(compiled, case):
    n1, n2, dtype, _ = case
    ptx = compiled[repr(case)]["ptx"]
    kind = {"bfloat16": "bf16", "float16": "f16"}[dtype]
    shapes = set(re.findall(rf"wgmma\.mma_async\.sync\.aligned\.m64n(\d+)k16\.f32\.{kind}\.{kind}", ptx))
    _, ba, bb = act_hopper.layout(n1, n2)
    assert shapes == {str(b) for b in (ba, bb) if b}  # the blocks' widths: none padded to the next power of two
    assert "cp.async.cg.shared.global" in ptx or "cp.async.ca.shared.global" in ptx  # token tiles by cp.async
    # Two waits per token (after the first and the second product) and one at the end: the first product of the
    # next token runs while this one is quantized
    assert len(re.findall(r"wgmma\.wait_group\.sync\.aligned", ptx)) == 3
    usage = compiled[repr(case)]["usage"]
    if usage:
        assert "LOCAL:0" in usage and "STACK:0" in usage, usage  # no register spills (they take a stack frame)


@pytest.mark.parametrize("n1,want", [(16, (16, 0)), (17, None), (48, (32, 16)), (56, None), (64, (64, 0)),
                                     (80, (64, 16)), (96, (64, 32)), (100, None), (128, (128, 0))])
def test_row_blocks(n1, want):
    assert act_hopper.row_blocks(n1) == want


@pytest.mark.parametrize("n2,want", [(148, (128, 32)), (80, (64, 16)), (150, None), (128, None), (64, None),
                                     (200, None), (96, (64, 32)), (72, (64, 16)), (48, None)])
def test_column_blocks(n2, want):
    assert act_hopper.column_blocks(n2) == want


@pytest.mark.parametrize("n1,n2,want", [(96, 128, ("rows", 64, 32)), (128, 148, ("cols", 128, 32)),
                                        (56, 64, None), (128, 128, ("rows", 128, 0)), (96, 148, None)])
def test_layout(n1, n2, want):
    assert act_hopper.layout(n1, n2) == want


def test_not_taken_off_hopper_or_with_input_ops():
    """CPU tensors, a channel scale, a gate, a missing factor, fp32 or mixed dtypes, unsupported widths, a
    non-contiguous input: the Triton kernels serve (`gemm.quantize_act_packed`)."""
    x = torch.zeros(4, 96 * 128, dtype=torch.bfloat16)
    left, right = torch.eye(96, dtype=torch.bfloat16), torch.eye(128, dtype=torch.bfloat16)
    assert not act_hopper.supported(x, None, None, left, right)  # CPU
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        return
    x, left, right = x.cuda(), left.cuda(), right.cuda()
    assert act_hopper.supported(x, None, None, left, right)
    assert not act_hopper.supported(x, torch.ones(96 * 128, device="cuda"), None, left, right)
    assert not act_hopper.supported(x, None, x, left, right)
    assert not act_hopper.supported(x, None, None, None, right)
    assert not act_hopper.supported(x.float(), None, None, left.float(), right.float())
    assert not act_hopper.supported(x.half(), None, None, left, right)
    assert not act_hopper.supported(torch.zeros(4, 128 * 150, dtype=torch.bfloat16, device="cuda"), None, None,
                                    torch.eye(128, dtype=torch.bfloat16, device="cuda"),
                                    torch.eye(150, dtype=torch.bfloat16, device="cuda"))
    assert not act_hopper.supported(torch.zeros(8, 96 * 128 * 2, dtype=torch.bfloat16, device="cuda")[:, ::2],
                                    None, None, left, right)


def test_fewer_than_three_stages_are_refused():
    """Two stages would refill the stage the next token's first product reads: refused before any launch."""
    x = torch.zeros(4, 96 * 128, dtype=torch.bfloat16)
    codes, scales = torch.empty(4, 96 * 128, dtype=torch.int8), torch.empty(4)
    with pytest.raises(ValueError, match="at least 3 stages"):
        act_hopper.quantize(x, torch.eye(96, dtype=torch.bfloat16), torch.eye(128, dtype=torch.bfloat16), None, 4,
                            codes, scales, (2, 3), 1)


def _on_hopper():
    if not torch.cuda.is_available() or registry.triton_interpreted() or \
            torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("needs an sm_90 GPU and TRITON_INTERPRET=0")


def _orthogonal(n, gen):
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0].float()


# (n1, n2): the widths the split path hands over. Row split: K = 12288 (64 + 32 rows), 48 = 32 + 16 on 64 columns,
# 80 = 64 + 16. Column split: K = 18944 (128 rows, 148 = 128 + 20 columns), 64 rows (one warpgroup) with 148 or 80.
@pytest.mark.parametrize("n1,n2", [(96, 128), (48, 64), (80, 128), (128, 148), (64, 148), (64, 80)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("stages", [(3, 3), (4, 3)])
def test_hopper_act_path_on_gpu_matches_reference(monkeypatch, n1, n2, dtype, stages):
    """Codes within one step of the reference where a value sits on a rounding boundary (the first product rounded
    to 16 bits between the MMAs, another summation order), scales to the factors' precision; NaN and Inf tokens get
    a NaN scale and zero codes, an all-zero token scale 0. From 1 token to several per program (3000 tokens: the
    pipeline goes round its stages), with a clip ratio and without."""
    _on_hopper()
    monkeypatch.setattr(gemm, "ACT_LAUNCH", dataclasses.replace(gemm.ACT_LAUNCH, hopper=True, hopper_stages=stages[0],
                                                                hopper_cols_stages=stages[1]))
    calls = []
    monkeypatch.setattr(act_hopper, "quantize", lambda *a, _run=act_hopper.quantize: calls.append(1) or _run(*a))
    gen = torch.Generator().manual_seed(n1 * 1000 + n2)
    left = _orthogonal(n1, gen).to(dtype)
    right = _orthogonal(n2, gen).to(dtype)
    cases = ((1, None), (3, torch.tensor(0.9)), (257, None), (3000, torch.tensor(0.8)))
    for m, clip in cases:
        x = torch.randn(m, n1 * n2, generator=gen).to(dtype)
        if m > 4:
            x[1, 5] = float("nan")
            x[2] = 0.0
            x[4, 70] = float("inf")
        args = (None, left, right, clip, 4)
        codes, scales = gemm.quantize_act_packed(x.cuda(), *(a.cuda() if isinstance(a, torch.Tensor) else a
                                                             for a in args))
        want_codes, want_scales = ref.quantize_act_packed(x, *args)
        codes, scales = codes.cpu(), scales.cpu()
        torch.testing.assert_close(scales, want_scales, rtol=2e-2, atol=0, equal_nan=True)
        assert (codes.int() - want_codes.int()).abs().max() <= 1, (m, n1, n2)
        assert (codes != want_codes).float().mean() < 2e-2, (m, n1, n2)
        if m > 4:
            assert scales[1].isnan() and scales[4].isnan() and scales[2] == 0
            assert not codes[[1, 2, 4]].any()
            assert scales[[0, 3]].isfinite().all()
    assert len(calls) == len(cases)  # the Hopper kernel ran every call


if __name__ == "__main__":  # the compilation for `compiled`, in a process of its own
    print(json.dumps(compile_cases(_compile, COMPILE_CASES)))
