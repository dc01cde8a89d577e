"""Triton W4A4 kernels against the reference, under the interpreter (conftest): exact integer GEMM (random and
worst-case data, every variant), epilogue, fused transform + activation quantization, and the custom ops."""
import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st

from faircalib import kernels
from faircalib.kernels import gemm, gemm_reference as ref

pytestmark = pytest.mark.triton_on_cpu


def _codes(shape, gen, low=-8, high=8):
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int8)


@pytest.mark.parametrize("n,k", [(3, 1), (5, 200), (16, 384)])
def test_unpack_kernel_matches_layout_spec(gen, n, k):
    codes = _codes((n, k), gen)
    out = gemm.unpack_weight_int8(kernels.pack_weight_for_gemm(codes))
    assert out.shape == (n, kernels.padded_k(k))
    assert torch.equal(out[:, :k], codes) and not out[:, k:].any()


@pytest.mark.parametrize("rows", [(1,), (7, 0, 17), (33, 5, 5)])
def test_stacked_gemm_matches_the_reference(gen, rows):
    """`w4a4_matmul_stacked` (Triton and reference) equals `w4a4_matmul` on the concatenated weight, bitwise;
    opcheck."""
    m, k = 9, 200
    codes = [_codes((n, k), gen) for n in rows]
    packed = [kernels.pack_weight_for_gemm(c) for c in codes]
    a, sa = _codes((m, k), gen, -128, 128), torch.rand(m, 1, generator=gen)
    sw, bias = torch.rand(sum(rows), generator=gen), torch.randn(sum(rows), generator=gen)
    want = ref.w4a4_matmul(a, sa, kernels.pack_weight_for_gemm(torch.cat(codes)), sw, bias, torch.float32)
    for backend in ("reference", "triton"):
        with kernels.use_backend(backend):
            got = kernels.w4a4_matmul_stacked(a, sa, packed, sw, bias, torch.float32)
            assert torch.equal(got, want), backend
            assert kernels.w4a4_matmul_stacked(a[:0], sa[:0], packed, sw, bias).shape == (0, sum(rows))
            torch.library.opcheck(torch.ops.faircalib.w4a4_matmul_stacked, (a, sa, packed, sw, None, torch.bfloat16))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 300), rows=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       with_bias=st.booleans(), out_dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 2 ** 16))
def test_stacked_gemm_fuzz_shapes(m, k, rows, with_bias, out_dtype, seed):
    """The Triton stacked GEMM (odd K and N, empty members, TMA or pointer stores) equals the reference bitwise."""
    gen = torch.Generator().manual_seed(seed)
    packed = [kernels.pack_weight_for_gemm(_codes((n, k), gen)) for n in rows]
    a, sa = _codes((m, k), gen, -128, 128), torch.rand(m, 1, generator=gen)
    sw = torch.rand(sum(rows), generator=gen)
    bias = torch.randn(sum(rows), generator=gen) if with_bias else None
    args = (a, sa, packed, sw, bias, out_dtype)
    assert torch.equal(gemm.w4a4_matmul_stacked(*args), ref.w4a4_matmul_stacked(*args))


def test_stacked_gemm_names_the_problem(gen):
    a, b = (kernels.pack_weight_for_gemm(_codes((4, k), gen)) for k in (64, 200))
    codes, sa, sw = _codes((2, 64), gen), torch.ones(2, 1), torch.ones(8)
    with pytest.raises(ValueError, match=r"w_packed\[1\] \(4, 128\) does not match K=64"):
        kernels.w4a4_matmul_stacked(codes, sa, [a, b], sw)
    with pytest.raises(TypeError, match=r"w_packed\[0\] must be a torch.int8"):
        kernels.w4a4_matmul_stacked(codes, sa, [a.float()], sw)
    with pytest.raises(TypeError, match="non-empty list"):
        kernels.w4a4_matmul_stacked(codes, sa, a, sw[:4])
    with pytest.raises(ValueError, match=r"one scale per output channel \(8\)"):
        kernels.w4a4_matmul_stacked(codes, sa, [a, a], sw[:4])


def _swiglu_args(gen, m, k, f, with_bias, with_cs, out_dtype):
    w_gate, w_up = (kernels.pack_weight_for_gemm(_codes((f, k), gen)) for _ in range(2))
    return (_codes((m, k), gen, -128, 128), torch.rand(m, 1, generator=gen), w_gate, w_up,
            torch.rand(2 * f, generator=gen), torch.randn(2 * f, generator=gen) if with_bias else None,
            torch.rand(f, generator=gen) + 0.5 if with_cs else None, out_dtype)


@pytest.mark.parametrize("m,k,f", [(1, 1, 1), (9, 200, 7), (33, 384, 64), (0, 64, 5)])
@pytest.mark.parametrize("with_bias,with_cs", [(False, False), (True, True)])
def test_swiglu_gemm_is_the_stacked_gemm_then_the_swiglu(gen, m, k, f, with_bias, with_cs):
    """`w4a4_matmul_swiglu`: in fp32, silu(gate) · up (· channel scale) of the exact integer GEMMs, computed
    independently in float64 (within fp32 rounding); the reference is the stacked GEMM's halves through
    `swiglu_scaled`, bitwise; the Triton backend off Hopper (the interpreter here) equals the reference bitwise;
    opcheck."""
    args = _swiglu_args(gen, m, k, f, with_bias, with_cs, torch.float32)
    a, sa, w_gate, w_up, sw, bias, cs, _ = args
    codes = torch.cat([kernels.unpack_weight_for_gemm(w, k) for w in (w_gate, w_up)]).double()
    both = a.double() @ codes.t() * sa.double() * sw.double() + (0 if bias is None else bias.double())
    exact = torch.nn.functional.silu(both[:, :f]) * both[:, f:] * (1 if cs is None else cs.double())
    want = ref.w4a4_matmul_swiglu(*args)
    assert want.shape == (m, f)
    largest = exact.abs().max().item() if exact.numel() else 0.0
    torch.testing.assert_close(want.double(), exact, rtol=1e-5, atol=1e-5 * max(1.0, largest))
    stacked = ref.w4a4_matmul_stacked(a, sa, [w_gate, w_up], sw, bias, torch.float32)
    assert torch.equal(want, ref.swiglu_scaled(stacked[:, :f], stacked[:, f:], cs, torch.float32))
    for backend in ("reference", "triton"):
        with kernels.use_backend(backend):
            assert torch.equal(kernels.w4a4_matmul_swiglu(*args), want), backend
            torch.library.opcheck(torch.ops.faircalib.w4a4_matmul_swiglu, args)


def test_swiglu_runs_after_the_gemm_off_hopper():
    """On the CPU, with either backend (the interpreter included), the op runs the stacked GEMM and then the SwiGLU:
    deployed models keep their SwiGLU outside it on GPUs where that is so (`SharedInputQuantization.swiglu`)."""
    for backend in ("reference", "triton"):
        with kernels.use_backend(backend):
            assert not kernels.swiglu_in_epilogue(torch.device("cpu"), 4096)
    assert not gemm.swiglu_in_epilogue(torch.device("cpu"), 4096)


def test_swiglu_in_epilogue_traces_without_a_graph_break():
    """Deployed models ask it inside compiled blocks: the answer becomes a constant of the graph."""
    import torch._dynamo

    torch._dynamo.reset()

    def block(x):
        return x * 2 if kernels.swiglu_in_epilogue(x.device, x.shape[-1]) else x + 1

    x = torch.ones(2, 64)
    assert torch.equal(torch.compile(block, backend="eager", fullgraph=True)(x), x + 1)


def test_swiglu_scaled_rounds_as_eager_pytorch(gen):
    """bf16: F.silu's result and the product are rounded as eager PyTorch rounds them, then the fp32 product with
    the channel scale once more (as the down projection's channel-scale pass, `gemm.scaled_input`)."""
    gate, up = (torch.randn(5, 24, generator=gen).to(torch.bfloat16) for _ in range(2))
    cs = torch.rand(24, generator=gen) + 0.5
    h = torch.nn.functional.silu(gate) * up
    assert torch.equal(ref.swiglu_scaled(gate, up, None, torch.bfloat16), h)
    assert torch.equal(ref.swiglu_scaled(gate, up, cs, torch.bfloat16), (h.float() * cs).to(torch.bfloat16))


def test_swiglu_gemm_names_the_problem(gen):
    a, sa, w_gate, w_up, sw, _, cs, _ = _swiglu_args(gen, 2, 64, 4, False, True, torch.float32)
    with pytest.raises(ValueError, match=r"w_up \(3, 64\) must match w_gate \(4, 64\)"):
        kernels.w4a4_matmul_swiglu(a, sa, w_gate, w_up[:3], sw)
    with pytest.raises(TypeError, match="w_up must be a torch.int8"):
        kernels.w4a4_matmul_swiglu(a, sa, w_gate, w_up.float(), sw)
    with pytest.raises(ValueError, match=r"one scale per output channel \(8\)"):
        kernels.w4a4_matmul_swiglu(a, sa, w_gate, w_up, sw[:4])
    with pytest.raises(ValueError, match=r"channel_scale must have shape \(4,\)"):
        kernels.w4a4_matmul_swiglu(a, sa, w_gate, w_up, sw, channel_scale=cs[:3])
    with pytest.raises(ValueError, match="does not match K=200"):
        kernels.w4a4_matmul_swiglu(torch.zeros(2, 200, dtype=torch.int8), sa, w_gate, w_up, sw)


def test_zero_width_inputs_name_the_problem():
    """K = 0 is refused up front by every deployment op (a reshape deep inside used to fail without saying why)."""
    w = kernels.pack_weight_for_gemm(torch.zeros(3, 0, dtype=torch.int8))
    codes, sa = torch.zeros(2, 0, dtype=torch.int8), torch.ones(2, 1)
    for call in (lambda: kernels.w4a4_matmul(codes, sa, w, torch.ones(3)),
                 lambda: kernels.w4a4_matmul_stacked(codes, sa, [w, w], torch.ones(6)),
                 lambda: kernels.int8_matmul(codes, sa, kernels.unpack_weight_int8(w), torch.ones(3)),
                 lambda: kernels.quantize_act_packed(torch.zeros(2, 0))):
        with pytest.raises(ValueError, match=r"has no features \(K = 0\)"):
            call()


def _integer_gemm(a, w_codes):
    """The GEMM with unit scales and an fp32 output: the int32 accumulator itself (|acc| < 2^24 here)."""
    m, n = a.shape[0], w_codes.shape[0]
    return gemm.w4a4_matmul(a, torch.ones(m, 1), kernels.pack_weight_for_gemm(w_codes), torch.ones(n), None,
                            torch.float32)


@pytest.mark.parametrize("m,n,k", [(1, 16, 128), (37, 24, 200), (70, 17, 384)])
def test_gemm_integer_results_are_exact(gen, m, n, k):
    a, w = _codes((m, k), gen, -128, 128), _codes((n, k), gen)
    assert torch.equal(_integer_gemm(a, w), ref.int_matmul_exact(a, w).float())


def test_gemm_strided_and_empty_activations(gen):
    wide = _codes((9, 300), gen, -128, 128)
    a, w = wide[:, 10:266], _codes((20, 256), gen)  # rows 300 bytes apart: not a TMA-aligned stride
    assert torch.equal(_integer_gemm(a, w), ref.int_matmul_exact(a, w).float())
    assert _integer_gemm(a[:0], w).shape == (0, 20)


@pytest.mark.parametrize("product", [64, -64])
def test_gemm_worst_case_longest_k_is_exact(product):
    m, n, k = 16, 16, 18944
    a = torch.full((m, k), -8 if product > 0 else 8, dtype=torch.int8)
    assert (_integer_gemm(a, torch.full((n, k), -8, dtype=torch.int8)) == product * k).all()


@pytest.fixture(params=[(True, True), (False, True), (True, False), (False, False)],
                ids=["tma-store-halves", "tma-store-whole", "halves-unflattened", "whole-unflattened"])
def epilogue(request, monkeypatch):
    """Each epilogue and loop variant the GPU autotuner chooses among (TMA store in two halves or whole; the tile
    and K loops pipelined as one or not); outputs whose row stride is not 16-byte aligned take pointer stores in
    either."""
    kernel = gemm._int8_gemm_kernel
    config = kernel.configs[0]
    subtile, flatten = request.param
    kwargs = {**config.kwargs, "SUBTILE": subtile, "FLATTEN": flatten}
    monkeypatch.setattr(kernel, "configs", [triton.Config(kwargs, num_warps=config.num_warps,
                                                          num_stages=config.num_stages, pre_hook=config.pre_hook)])
    monkeypatch.setattr(kernel, "cache", {})
    return request.param


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("m,n", [(33, 40), (37, 17), (1, 72)])
def test_gemm_epilogue_matches_reference(gen, epilogue, bias, m, n):
    k = 256
    a, w = _codes((m, k), gen), kernels.pack_weight_for_gemm(_codes((n, k), gen))
    sa, sw = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    args = (a, sa, w, sw, b)
    assert torch.equal(gemm.w4a4_matmul(*args, torch.float32), ref.w4a4_matmul(*args, torch.float32))
    got, want = gemm.w4a4_matmul(*args, torch.bfloat16), ref.w4a4_matmul(*args, torch.bfloat16)
    # The interpreter casts fp32 -> bf16 by truncation, the GPU and torch round to nearest: 1 ulp apart at most.
    torch.testing.assert_close(got.float(), want.float(), rtol=2 ** -7, atol=0)


def _orthogonal(n, gen):
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0].float()


def _act_args(n1, n2, parts, gen, clip=None):
    """quantize_act_packed's arguments after x: channel scale ("c"), left ("l") and right ("r") factors, clip, bits."""
    return (torch.rand(n1 * n2, generator=gen) + 0.5 if "c" in parts else None,
            _orthogonal(n1, gen) if "l" in parts else None, _orthogonal(n2, gen) if "r" in parts else None,
            clip, 4)


CHUNKED = gemm.ActLaunch(fused_max_tile=0, split_max_tile=0, chunk_j=32, chunk_k=16)  # small slices: the tests
# cross their boundaries
SPLIT = gemm.ActLaunch(fused_max_tile=0)  # transforms that split into narrower blocks take the split kernel
TILE = gemm.ActLaunch(split_over_tile=False)  # whole tiles wherever they fit


@pytest.mark.parametrize("n1,n2,parts,launch,path", [
    (1, 200, "", None, "tile"), (64, 64, "lr", None, "tile"), (56, 64, "clr", None, "tile"),
    (32, 128, "cr", None, "tile"), (16, 48, "l", TILE, "tile"), (16, 48, "l", None, "split"),
    (16, 100, "lr", None, "tile"),
    (96, 128, "clr", CHUNKED, "chunked"), (20, 148, "lr", CHUNKED, "chunked"), (7, 33, "clr", CHUNKED, "chunked"),
    (16, 100, "r", CHUNKED, "chunked"), (17, 40, "cl", CHUNKED, "chunked"), (1, 64, "r", CHUNKED, "chunked"),
    (20, 80, "lr", SPLIT, "split"), (7, 33, "clr", SPLIT, "split"), (16, 80, "r", SPLIT, "split"),
    (17, 40, "cl", SPLIT, "split"), (1, 80, "cr", SPLIT, "split"), (5, 40, "l", SPLIT, "split"),
    (40, 16, "clr", SPLIT, "split"),  # rows split: the transposed view
    # A whole tile fits, the split saves work: split (rows), unless a channel scale is to be applied (whole tile).
    (48, 32, "lr", None, "split"), (40, 16, "l", None, "split"), (48, 32, "clr", None, "tile"),
    (48, 32, "lr", TILE, "tile")])
def test_act_quant_matches_reference(gen, monkeypatch, n1, n2, parts, launch, path):
    if launch is not None:
        monkeypatch.setattr(gemm, "ACT_LAUNCH", launch)
    x = torch.randn(9, n1 * n2, generator=gen).to(torch.bfloat16)
    x[3] = 0
    args = _act_args(n1, n2, parts, gen, torch.tensor(0.9))
    assert gemm.act_path(n1, n2, torch.float32 if "l" in parts or "r" in parts else None, "c" in parts) == path
    codes, scales = gemm.quantize_act_packed(x, *args)
    want_codes, want_scales = ref.quantize_act_packed(x, *args)
    torch.testing.assert_close(scales, want_scales, rtol=1e-6, atol=0)
    # The transform's sums run in another order than torch's: a value on a rounding boundary may round the other way.
    differ = codes != want_codes
    assert (codes.int() - want_codes.int()).abs().max() <= 1 and differ.float().mean() < 1e-3
    if not parts:
        assert not differ.any()
    assert scales[3] == 0 and not codes[3].any()


def test_act_quant_path_choice_follows_factor_size():
    assert gemm.fused_transform_supported(56, 64, torch.float32)  # K = 3584: whole tile
    assert gemm.fused_transform_supported(64, 64, torch.bfloat16)  # K = 4096
    assert gemm.fused_transform_supported(96, 128, torch.bfloat16)  # K = 12288, bf16 factors
    assert not gemm.fused_transform_supported(96, 128, torch.float32)  # fp32 factors: chunked
    assert not gemm.fused_transform_supported(128, 148, torch.bfloat16)  # K = 18944: split columns
    assert gemm.split_columns(128, 148, torch.bfloat16) == (128, 128, 32)  # 160 columns instead of 256
    assert gemm.split_columns(7, 33, torch.float32) == (16, 32, 16)
    assert gemm.split_columns(128, 148, torch.float32) is None  # fp32 factors: too large, chunked
    assert gemm.split_columns(96, 128, torch.bfloat16) is None  # a power of two: nothing to split
    assert gemm.split_columns(4, 12, torch.bfloat16) is None  # blocks under 16 columns: chunked
    assert gemm.split_columns(16, 100, torch.bfloat16) is None  # 64 + 64 columns: no narrower than 128 padded
    assert gemm.split_layout(128, 148, torch.bfloat16) == (128, 128, 32, False)
    assert gemm.split_layout(96, 128, torch.bfloat16) == (128, 64, 32, True)  # rows split: 128 x (64 + 32)
    assert gemm.split_layout(96, 128, torch.float32) is None  # fp32 factors over split_max_factor_bytes
    assert gemm.split_layout(56, 64, torch.bfloat16) is None  # 32 + 32 rows: no saving over 64
    assert [gemm.act_path(n1, n2, dtype) for n1, n2, dtype in [(64, 64, torch.bfloat16), (96, 128, torch.bfloat16),
            (128, 148, torch.bfloat16), (96, 128, torch.float32), (1, 4096, None)]] == \
        ["tile", "split", "split", "chunked", "tile"]
    # With a channel scale or gate to apply, K = 12288 keeps the whole tile (the split kernel needs a pass first).
    assert gemm.act_path(96, 128, torch.bfloat16, input_ops=True) == "tile"
    assert gemm.act_path(128, 148, torch.bfloat16, input_ops=True) == "split"


# (registers per thread, shared memory bytes, warps) of the activation kernels as Triton 3.6 compiles them for sm_90
# (H100 limits: 227 KiB of shared memory per program at most, 64 Ki registers per SM).
@pytest.mark.parametrize("n_regs,shared,warps,resident", [
    (75, 45056, 4, 5),  # whole tile, K = 3584 / 4096, pipelined 3 deep: shared memory admits 5 (registers 6)
    (74, 36864, 4, 6),  # the same 2 deep: 6 by registers and shared memory
    (126, 108544, 8, 2),  # rows split (K = 12288), 2 deep
    (123, 133120, 8, 1),  # the same 3 deep
    (203, 223232, 8, 1),  # split columns (K = 18944)
    (16, 0, 1, 32),  # tiny programs: the 32-per-SM limit
    (32, 0, 32, 2),  # 64 warps per SM
])
def test_programs_an_sm_holds_at_once(n_regs, shared, warps, resident):
    assert gemm.resident_per_sm(n_regs, shared, warps, 232448, 65536) == resident


def test_persistent_launch_is_capped_at_what_an_sm_holds(monkeypatch):
    """`_programs` on a (mocked) GPU: per_sm programs per SM unless fewer fit at once, worked out from the compiled
    kernel once per kernel and launch settings; the cap can be turned off (`fit_resident`)."""
    class Compiled:
        n_regs, metadata = 75, type("Metadata", (), {"shared": 45056, "num_warps": 4})

        def _init_handles(self):
            pass

    compiles = []

    class Kernel:
        def warmup(self, *args, grid, **kwargs):
            compiles.append((args, kwargs))
            return Compiled()

    monkeypatch.setattr(gemm, "_sm_limits", lambda index: (232448, 65536))
    monkeypatch.setattr(gemm, "_num_sms", lambda index: 132)
    monkeypatch.setattr(gemm, "_resident", {})
    cuda, kernel, args = torch.device("cuda", 0), Kernel(), (torch.zeros(1), 3)
    assert gemm._programs(kernel, 10 ** 6, cuda, 8, args, {"B1": 64}) == 5 * 132
    assert gemm._programs(kernel, 100, cuda, 8, args, {"B1": 64}) == 100  # fewer items than programs
    assert gemm._programs(kernel, 10 ** 6, cuda, 2, args, {"B1": 64}) == 2 * 132
    assert len(compiles) == 1  # compiled once for these settings
    gemm._programs(kernel, 10 ** 6, cuda, 8, args, {"B1": 32})
    assert len(compiles) == 2
    monkeypatch.setattr(gemm, "ACT_LAUNCH", gemm.ActLaunch(fit_resident=False))
    assert gemm._programs(kernel, 10 ** 6, cuda, 8, args, {"B1": 64}) == 8 * 132
    assert gemm._programs(kernel, 10 ** 6, torch.device("cpu"), 8, args, {}) == 10 ** 6  # interpreter: one per item
    monkeypatch.setattr(gemm, "ACT_LAUNCH", gemm.ActLaunch())
    Compiled.n_regs = None  # a Triton whose compiled kernels report no registers: uncapped, with a warning
    with pytest.warns(UserWarning, match="uncapped"):
        assert gemm._programs(kernel, 10 ** 6, cuda, 8, args, {"B1": 16}) == 8 * 132


@pytest.mark.parametrize("gated,scaled,dtype", [(False, True, torch.bfloat16), (True, True, torch.float16),
                                                (True, False, torch.float32), (False, False, torch.bfloat16)])
def test_scaled_input_pass_matches_torch(gen, gated, scaled, dtype):
    """The split kernel's pre-pass: (silu(gate) · x) · channel_scale in fp32, rounded to the factors' dtype, as
    torch computes it; odd widths cross the pass's blocks, rows are strided."""
    x = torch.randn(3, 2 * gemm.SCALED_INPUT_BLOCK + 77, generator=gen).to(dtype)[:, :-40]
    gate = torch.randn(3, 2 * gemm.SCALED_INPUT_BLOCK + 77, generator=gen).to(dtype)[:, :-40] if gated else None
    cs = torch.rand(x.shape[1], generator=gen) + 0.5 if scaled else None
    want = torch.nn.functional.silu(gate) * x if gated else x
    want = (want.float() * cs if scaled else want.float()).to(torch.bfloat16)
    got = gemm.scaled_input(x, gate, cs, torch.bfloat16)
    assert got.is_contiguous()
    if gated:  # the kernel's exp and division are within an fp32 ulp of torch's: a rounding may flip, rarely
        torch.testing.assert_close(got, want, rtol=2 ** -7, atol=0)
        assert (got != want).float().mean() < 1e-3
    else:
        assert torch.equal(got, want)
    assert gemm.scaled_input(x[:0], gate, cs, torch.bfloat16).shape == (0, x.shape[1])


@pytest.mark.parametrize("launch", [CHUNKED, SPLIT], ids=["chunked", "split"])
def test_act_quant_large_factor_paths_nonfinite_and_empty(gen, monkeypatch, launch):
    monkeypatch.setattr(gemm, "ACT_LAUNCH", launch)
    x = torch.randn(3, 20 * 80, generator=gen)
    x[0, 5], x[2, 1500] = float("inf"), float("nan")
    left, right = _orthogonal(20, gen), _orthogonal(80, gen)
    assert gemm.act_path(20, 80, torch.float32) == ("split" if launch is SPLIT else "chunked")
    codes, scales = gemm.quantize_act_packed(x, None, left, right, None, 4)
    assert scales[0].isnan() and scales[2].isnan() and scales[1].isfinite()
    assert not codes[0].any() and not codes[2].any()
    codes, scales = gemm.quantize_act_packed(x[:0], None, left, right, None, 4)
    assert codes.shape == (0, 20 * 80) and scales.shape == (0, 1)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 9), n1=st.integers(1, 40), n2=st.integers(1, 40),
       parts=st.sampled_from(["lr", "clr", "l", "r"]),
       path=st.sampled_from(["default", "tile", "split", "chunked"]), rows=st.sampled_from([1, 64, 128]),
       gated=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), seed=st.integers(0, 2 ** 16))
def test_act_quant_fuzz_shapes_and_paths(m, n1, n2, parts, path, rows, gated, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n1 * n2, generator=gen).to(dtype)
    gate = torch.randn(m, n1 * n2, generator=gen).to(dtype) if gated else None
    args = _act_args(n1, n2, parts, gen)
    launch = {"default": gemm.ActLaunch(transform_rows=rows),
              "tile": gemm.ActLaunch(transform_rows=rows, split_over_tile=False), "split": SPLIT,
              "chunked": gemm.ActLaunch(fused_max_tile=0, split_max_tile=0, chunk_j=16, chunk_k=16)}[path]
    original, gemm.ACT_LAUNCH = gemm.ACT_LAUNCH, launch
    try:
        codes, scales = (gemm.quantize_swiglu_packed(gate, x, *args) if gated else gemm.quantize_act_packed(x, *args))
    finally:
        gemm.ACT_LAUNCH = original
    want_codes, want_scales = (ref.quantize_swiglu_packed(gate, x, *args) if gated
                               else ref.quantize_act_packed(x, *args))
    # A gated product in a 16-bit dtype may round the other way (exp and division differ from torch's by an ulp).
    rtol = (1e-2 if dtype != torch.float32 else 1e-5) if gated else 1e-6
    torch.testing.assert_close(scales, want_scales, rtol=rtol, atol=0)
    # A value on a rounding boundary may round the other way (other summation order); tiny tiles make that rare.
    assert (codes.int() - want_codes.int()).abs().max() <= 1 and (codes != want_codes).float().mean() <= 0.05


def test_act_quant_without_transform_is_the_plain_quantizer(gen):
    x = torch.randn(6, 1025, generator=gen).to(torch.float16)[:, :1000]  # non-contiguous rows, odd width
    clip = torch.tensor(0.7)
    got, want = gemm.quantize_act_packed(x, None, None, None, clip, 4), ref.quantize_act_packed(x, None, None, None,
                                                                                                clip, 4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_act_quant_nonfinite_rows(gen):
    x = torch.randn(3, 64 * 64, generator=gen)
    x[0, 7], x[2, 0] = float("nan"), float("-inf")
    codes, scales = gemm.quantize_act_packed(x, None, _orthogonal(64, gen), _orthogonal(64, gen), None, 4)
    assert scales[0].isnan() and scales[2].isnan() and scales[1].isfinite()
    assert not codes[0].any() and not codes[2].any()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_custom_ops_pass_opcheck(gen, backend):
    x = torch.randn(4, 32 * 16, generator=gen)
    left, right = _orthogonal(32, gen), _orthogonal(16, gen)
    w = kernels.pack_weight_for_gemm(_codes((24, 512), gen))
    with kernels.use_backend(backend):
        torch.library.opcheck(torch.ops.faircalib.quantize_act_packed, (x, None, left, right, torch.tensor(0.8), 4))
        torch.library.opcheck(torch.ops.faircalib.quantize_swiglu_packed,
                              (x.flip(0), x, None, left, right, torch.tensor(0.8), 4))
        codes, scales = kernels.quantize_act_packed(x, left=left, right=right)
        torch.library.opcheck(torch.ops.faircalib.w4a4_matmul,
                              (codes, scales, w, torch.rand(24, generator=gen), None, torch.bfloat16))
        torch.library.opcheck(torch.ops.faircalib.unpack_weight_int8, (w,))
        torch.library.opcheck(torch.ops.faircalib.int8_matmul,
                              (codes, scales, kernels.unpack_weight_int8(w), torch.rand(24, generator=gen), None,
                               torch.bfloat16))


@pytest.mark.parametrize("m,n,k", [(1, 7, 17), (9, 33, 200), (0, 5, 64)])
def test_unpacked_weight_matmul_equals_the_packed_one(gen, m, n, k):
    """`unpack_weight_int8` then `int8_matmul` (Triton and reference) gives `w4a4_matmul`'s result exactly."""
    w_codes = _codes((n, k), gen)
    packed = kernels.pack_weight_for_gemm(w_codes)
    a = _codes((m, k), gen, -128, 128)
    sa, sw, bias = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen), torch.randn(n, generator=gen)
    for backend in ("reference", "triton"):
        with kernels.use_backend(backend):
            unpacked = kernels.unpack_weight_int8(packed)
            assert unpacked.shape == (n, kernels.padded_k(k)) and not unpacked[:, k:].any()
            assert torch.equal(unpacked[:, :k], w_codes)
            got = kernels.int8_matmul(a, sa, unpacked, sw, bias, torch.float32)
            assert torch.equal(got, kernels.w4a4_matmul(a, sa, packed, sw, bias, torch.float32)), backend


def test_unpacked_weight_ops_name_the_problem(gen):
    packed = kernels.pack_weight_for_gemm(_codes((4, 64), gen))
    a, sa, sw = _codes((2, 64), gen), torch.ones(2, 1), torch.ones(4)
    with pytest.raises(ValueError, match=r"expected \[N, 128\]; make it with unpack_weight_int8"):
        kernels.int8_matmul(a, sa, packed, sw)
    with pytest.raises(TypeError, match="w_int8 must be a torch.int8"):
        kernels.int8_matmul(a, sa, kernels.unpack_weight_int8(packed).float(), sw)
    with pytest.raises(ValueError, match="not in the GEMM layout"):
        kernels.unpack_weight_int8(packed[:, :40])


def test_public_ops_compose_to_a_linear(gen):
    x = torch.randn(2, 5, 256, generator=gen)
    codes, scales = kernels.quantize_act_packed(x, clip_ratio=1.0)
    assert codes.shape == (2, 5, 256) and scales.shape == (2, 5, 1)
    w_codes = _codes((12, 256), gen)
    y = kernels.w4a4_matmul(codes, scales, kernels.pack_weight_for_gemm(w_codes), torch.ones(12), None,
                            torch.float32)
    want = (codes.double() * scales.double()) @ w_codes.double().t()
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)


def test_public_ops_name_the_problem(gen):
    x = torch.randn(4, 96, generator=gen)
    with pytest.raises(ValueError, match="n1 \\* n2 = K"):
        kernels.quantize_act_packed(x, left=torch.eye(5))
    codes, scales = kernels.quantize_act_packed(x)
    with pytest.raises(ValueError, match="pack_weight_for_gemm"):
        kernels.w4a4_matmul(codes, scales, torch.zeros(3, 48, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="per-group"):
        kernels.w4a4_matmul(codes, scales, torch.zeros(3, 64, dtype=torch.int8), torch.ones(3, 2))
    with pytest.raises(TypeError, match="int8"):
        kernels.w4a4_matmul(codes.float(), scales, torch.zeros(3, 64, dtype=torch.int8), torch.ones(3))


@pytest.mark.parametrize("n1,n2,parts,launch", [(1, 300, "", None), (1, 300, "", gemm.ActLaunch(plain_max_k=16)),
                                                (16, 48, "clr", None), (20, 148, "lr", CHUNKED)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swiglu_quant_matches_the_unfused_reference(gen, monkeypatch, n1, n2, parts, launch, dtype):
    if launch is not None:
        monkeypatch.setattr(gemm, "ACT_LAUNCH", launch)
    gate, up = (torch.randn(6, n1 * n2, generator=gen).to(dtype) * 3 for _ in range(2))
    args = _act_args(n1, n2, parts, gen, torch.tensor(0.9))
    codes, scales = gemm.quantize_swiglu_packed(gate, up, *args)
    want_codes, want_scales = ref.quantize_swiglu_packed(gate, up, *args)
    assert torch.equal(want_codes, ref.quantize_act_packed(torch.nn.functional.silu(gate) * up, *args)[0])
    # exp and the division may differ from torch's by an ulp of fp32: rarely, a bf16 product rounds the other way.
    torch.testing.assert_close(scales, want_scales, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=0)
    assert (codes.int() - want_codes.int()).abs().max() <= 1 and (codes != want_codes).float().mean() < 1e-2


def test_swiglu_quant_public_op_checks_the_gate(gen):
    up = torch.randn(4, 64, generator=gen)
    with pytest.raises(ValueError, match="gate must match x"):
        kernels.quantize_act_packed(up, gate=torch.randn(4, 32, generator=gen))
    codes, scales = kernels.quantize_act_packed(up.reshape(2, 2, 64), gate=up.reshape(2, 2, 64))
    assert codes.shape == (2, 2, 64) and scales.shape == (2, 2, 1)


@pytest.mark.parametrize("n1,n2,parts,launch", [(64, 64, "clr", None), (20, 148, "clr", SPLIT), (7, 33, "lr", CHUNKED),
                                                (1, 200, "", None)])
def test_inputs_past_int32_offsets_run_in_row_blocks(gen, monkeypatch, n1, n2, parts, launch):
    """The kernels use int32 offsets: at 2^31 elements the wrappers launch them over row blocks. With the limit
    lowered to 2.5 rows, the activation paths and the GEMM give the single-launch results exactly."""
    if launch is not None:
        monkeypatch.setattr(gemm, "ACT_LAUNCH", launch)
    k = n1 * n2
    x = torch.randn(7, k + 3, generator=gen).to(torch.bfloat16)[:, :k]  # strided rows
    args = _act_args(n1, n2, parts, gen, torch.tensor(0.9))
    w, sw, bias = kernels.pack_weight_for_gemm(_codes((5, k), gen)), torch.rand(5, generator=gen), torch.randn(5)
    want = gemm.quantize_act_packed(x, *args)
    want_y = gemm.w4a4_matmul(*want, w, sw, bias, torch.float32)
    monkeypatch.setattr(gemm, "MAX_OFFSET", 2 * (k + 3) + k // 2)
    assert gemm._rows_per_launch(k + 3, k) == 2  # 7 rows: four launches
    got = gemm.quantize_act_packed(x, *args)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    monkeypatch.setattr(gemm, "MAX_OFFSET", 12)  # output rows of 5 elements: two per launch
    assert gemm._rows_per_launch(5, 5) == 2
    assert torch.equal(gemm.w4a4_matmul(*want, w, sw, bias, torch.float32), want_y)


@pytest.mark.parametrize("start", [8, 3])
def test_gemm_writes_into_a_column_slice(gen, epilogue, start):
    """`int8_gemm(..., out=view)`: a column slice of a wider output (16-byte aligned: TMA store; not: pointer
    stores) gets the standalone result, and the columns around it stay untouched."""
    m, n, k = 21, 40, 256
    a, w = _codes((m, k), gen, -128, 128), gemm.unpack_weight_int8(kernels.pack_weight_for_gemm(_codes((n, k), gen)))
    sa, sw = torch.rand(m, 1, generator=gen), torch.rand(n, generator=gen)
    wide = torch.full((m, 56), 7.0)
    gemm.int8_gemm(a, sa, w, sw, None, torch.float32, out=wide[:, start:start + n])
    assert torch.equal(wide[:, start:start + n], gemm.int8_gemm(a, sa, w, sw, None, torch.float32))
    assert (wide[:, :start] == 7).all() and (wide[:, start + n:] == 7).all()


@pytest.mark.parametrize("gated", [False, True])
def test_compiled_split_transform_scales_its_input_in_the_graph(gen, monkeypatch, gated):
    """Under torch.compile, where the Triton kernels would apply a channel scale (and SwiGLU) in a pass of their
    own (the split-column path), `quantize_act_packed` computes it in the traced graph instead, for Inductor to fuse
    into x's producer; the op then gets no channel scale, and the codes equal eager's (fp32 here: no rounding)."""
    import torch._dynamo

    from faircalib.kernels import api, registry

    monkeypatch.setattr(api, "_channel_scale_pass", lambda *args: True)  # as on a GPU for K = 18944
    x, gate = torch.randn(2, 5, 96, generator=gen), torch.randn(2, 5, 96, generator=gen) if gated else None
    left, right, cs = _orthogonal(8, gen), _orthogonal(12, gen), torch.rand(96, generator=gen) + 0.5

    def quantize(x, gate):
        return kernels.quantize_act_packed(x, clip_ratio=0.9, channel_scale=cs, left=left, right=right, gate=gate)

    want = quantize(x, gate)
    seen, original = [], registry.implementation

    def recording(op, device):
        impl = original(op, device)

        def recorded(*args):
            seen.append((op, args[2 if op == "quantize_swiglu_packed" else 1]))
            return impl(*args)
        return recorded

    monkeypatch.setattr(registry, "implementation", recording)
    torch._dynamo.reset()
    got = torch.compile(quantize, backend="aot_eager", fullgraph=True)(x, gate)
    assert [(op, cs_arg) for op, cs_arg in seen] == [("quantize_act_packed", None)]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
