"""The register-unpack W4A4 GEMM (`kernels/gemm_regs.py`, Gluon) compiled for sm_90 without a GPU: Gluon has no
interpreter, so CI checks that the installed Triton builds it (wgmma on int8 register operands, no spilled
registers); `test_gemm_cuda.py` checks its results on a GPU. The compilation runs in a fresh process
(`gluon_offline.py`)."""
import json

import pytest
import torch

from faircalib.kernels import gemm
from gluon_offline import compile_cases, compile_sm90, compiled_in_fresh_process  # tests/kernels, on the path

pytestmark = pytest.mark.skipif(gemm.gemm_regs is None, reason="Triton without Gluon")

CASES = [(config, has_bias, dtype, members) for config in (gemm.gemm_regs.CONFIGS if gemm.gemm_regs else ())
         for has_bias, dtype, members in ((False, "bfloat16", 1), (True, "float32", 3), (False, "bfloat16", 2))]


def _compile(config, has_bias, out_dtype_name, members):
    from triton.runtime.jit import mangle_type

    regs = gemm.gemm_regs
    w_desc = mangle_type(regs.weight_descriptor(torch.zeros(256, 2048, dtype=torch.int8)))
    warps, stages, block_m = config
    a_desc = mangle_type(regs.codes_descriptor(torch.zeros(512, 4096, dtype=torch.int8), block_m))
    out = mangle_type(torch.empty(0, dtype=getattr(torch, out_dtype_name)))
    signature = {"w0_desc": w_desc, "w1_desc": w_desc, "w2_desc": w_desc, "a_desc": a_desc, "sa_ptr": "*fp32",
                 "sw_ptr": "*fp32", "bias_ptr": "*fp32", "c_ptr": out,
                 "M": "i32", "N0": "i32", "N1": "i32", "N2": "i32", "K": "i32", "stride_cm": "i32",
                 "HAS_BIAS": "constexpr", "MEMBERS": "constexpr", "STAGES": "constexpr", "GROUP_M": "constexpr",
                 "num_warps": "constexpr"}
    return compile_sm90(regs._w4a4_regs_kernel, signature, {"HAS_BIAS": has_bias, "MEMBERS": members,
                                                            "STAGES": stages, "GROUP_M": regs.GROUP_M,
                                                            "num_warps": warps})


# The SwiGLU kernel: the 4-warp configs (the 8-warp one is refused), without and with bias and channel scale
SWIGLU_CASES = [("swiglu", config, has_bias, dtype) for config in (gemm.gemm_regs.CONFIGS if gemm.gemm_regs else ())
                if config[0] == 4 for has_bias, dtype in ((False, "bfloat16"), (True, "float16"))]


def _compile_swiglu(_, config, has_bias, out_dtype_name):
    from triton.runtime.jit import mangle_type

    regs = gemm.gemm_regs
    w_desc = mangle_type(regs.weight_descriptor(torch.zeros(256, 2048, dtype=torch.int8), regs.BLOCK_N // 2))
    warps, stages, block_m = config
    a_desc = mangle_type(regs.codes_descriptor(torch.zeros(512, 4096, dtype=torch.int8), block_m))
    out = mangle_type(torch.empty(0, dtype=getattr(torch, out_dtype_name)))
    signature = {"wg_desc": w_desc, "wu_desc": w_desc, "a_desc": a_desc, "sa_ptr": "*fp32", "sw_ptr": "*fp32",
                 "bias_ptr": "*fp32", "cs_ptr": "*fp32", "c_ptr": out, "M": "i32", "F": "i32", "K": "i32",
                 "stride_cm": "i32", "HAS_BIAS": "constexpr", "HAS_CS": "constexpr", "STAGES": "constexpr",
                 "GROUP_M": "constexpr", "num_warps": "constexpr"}
    return compile_sm90(regs._w4a4_swiglu_kernel, signature, {"HAS_BIAS": has_bias, "HAS_CS": not has_bias,
                                                              "STAGES": stages, "GROUP_M": regs.GROUP_M,
                                                              "num_warps": warps})


@pytest.fixture(scope="module")
def compiled():
    return compiled_in_fresh_process(__file__)


@pytest.mark.parametrize("case", SWIGLU_CASES, ids=[f"w{c[1][0]}-s{c[1][1]}-t{c[1][2]}-bias{c[2]}-{c[3]}"
                                                    for c in SWIGLU_CASES])
def test_swiglu_gemm_compiles_for_hopper(compiled, case):
    """The SwiGLU epilogue's split of the accumulator into its gate and up halves stays in registers (no shared
    memory beyond the stages' and the output tile's) and nothing spills."""
    result = compiled[repr(case)]
    assert f"wgmma.mma_async.sync.aligned.m64n{case[1][2]}k32.s32.s8.s8" in result["ptx"]
    if result["usage"]:
        assert "LOCAL:0" in result["usage"] and "STACK:0" in result["usage"], result["usage"]


def test_swiglu_kernel_refuses_two_warpgroups():
    a = torch.zeros(4, 256, dtype=torch.int8)
    w = torch.zeros(8, 128, dtype=torch.int8)
    with pytest.raises(ValueError, match="one warpgroup"):
        gemm.gemm_regs.w4a4_matmul_swiglu_regs(a, torch.ones(4), w, w, torch.ones(16), None, None,
                                               torch.empty(4, 8), (8, 3, 128))


@pytest.mark.parametrize("case", CASES, ids=[f"w{c[0]}-s{c[1]}-t{c[2]}-bias{b}-{d}-x{n}" for c, b, d, n in CASES])
def test_register_unpack_gemm_compiles_for_hopper(compiled, case):
    result = compiled[repr(case)]
    tokens = case[0][2]
    assert f"wgmma.mma_async.sync.aligned.m64n{tokens}k32.s32.s8.s8" in result["ptx"]  # int8, A from registers
    assert "0xf0f0f0f0" in result["ptx"].lower()  # the in-register unpack's mask
    if result["usage"]:
        assert "LOCAL:0" in result["usage"] and "STACK:0" in result["usage"], result["usage"]  # no register spills


def test_design_off_hopper_is_the_unpack_pass():
    """CPU tensors (and the interpreter) run the unpack pass + INT8 GEMM; a bad forced design, or a register one on
    rows of K >= MAX_K, is refused."""
    a = torch.zeros(4, 256, dtype=torch.int8)
    w = [torch.zeros(8, 128, dtype=torch.int8)]
    assert gemm.w4a4_design(a, torch.ones(4, 1), w, torch.ones(8), None, torch.float32) == "unpack"
    with pytest.raises(ValueError, match="unknown W4A4 design"):
        gemm._w4a4_run("regs:2:2:128", a, torch.ones(4, 1), w, torch.ones(8), None, torch.float32)
    long_rows = [torch.zeros(8, gemm.gemm_regs.MAX_K // 2, dtype=torch.int8)]
    with pytest.raises(ValueError, match="needs K <"):
        gemm._w4a4_run("regs:8:3:128", a, torch.ones(4, 1), long_rows, torch.ones(8), None, torch.float32)


def test_register_kernel_refuses_a_single_stage():
    """Its loop refills the stage the previous K group used while the current group's MMAs run: one stage would
    overwrite the operands in use, so such a config is refused before any launch."""
    a = torch.zeros(4, 256, dtype=torch.int8)
    with pytest.raises(ValueError, match="at least 2 stages"):
        gemm.gemm_regs.w4a4_matmul_regs(a, torch.ones(4), [torch.zeros(8, 128, dtype=torch.int8)], torch.ones(8), None,
                                        torch.empty(4, 8), (4, 1, 128))
    assert all(stages >= 2 for _, stages, _ in gemm.gemm_regs.CONFIGS)


def test_register_design_launches_up_to_three_weights_each_into_their_columns(monkeypatch):
    """The register design's launches for a stack of five weights (no GPU: the launch recorded): the first three
    weights in one, the last two in another, each with the scales, bias and output columns of its weights."""
    calls = []
    monkeypatch.setattr(gemm.gemm_regs, "w4a4_matmul_regs",
                        lambda codes, scales, group, sw, bias, out, config: calls.append(
                            ([w.shape[0] for w in group], sw.tolist(), bias.tolist(), out.shape, config)))
    widths = [2, 1, 3, 1, 2]
    a = torch.zeros(4, 256, dtype=torch.int8)
    w = [torch.zeros(n, 128, dtype=torch.int8) for n in widths]
    columns = torch.arange(9.0)
    gemm._w4a4_run("regs:4:4:64", a, torch.ones(4, 1), w, columns, -columns, torch.bfloat16)
    assert calls == [([2, 1, 3], [0, 1, 2, 3, 4, 5], [0, -1, -2, -3, -4, -5], (4, 6), (4, 4, 64)),
                     ([1, 2], [6, 7, 8], [-6, -7, -8], (4, 3), (4, 4, 64))]


@pytest.fixture
def timed_designs(monkeypatch):
    """w4a4_design as on a Hopper GPU, with each design's run and timing replaced: {design: ms or an exception}."""
    plan, runs = dict.fromkeys(gemm.REGS_DESIGNS, 9.0), []  # the tests set the times of the designs they compare

    def run(design, *args):
        runs.append(design)
        if isinstance(plan[design], Exception):
            raise plan[design]

    monkeypatch.setattr(gemm, "_designs", {})
    monkeypatch.setattr(gemm, "DESIGN_TIMES", {})
    monkeypatch.setattr(gemm.gemm_regs, "supported", lambda device: True)
    monkeypatch.setattr(gemm.registry, "triton_interpreted", lambda: False)
    monkeypatch.setattr(gemm, "_w4a4_run", run)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(gemm, "_timing_graph", lambda fn, pool: fn)  # the "graph" is the run itself
    monkeypatch.setattr(gemm, "_replay_median_ms", lambda fn: plan[fn.args[0]])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    return plan, runs


def _design(m=300, widths=(64, 32)):
    a = torch.zeros(m, 256, dtype=torch.int8)
    return gemm.w4a4_design(a, torch.ones(m, 1), [torch.zeros(n, 128, dtype=torch.int8) for n in widths],
                            torch.ones(sum(widths)), None, torch.bfloat16)


def test_design_is_the_fastest_and_timed_once_per_shape(timed_designs):
    plan, runs = timed_designs
    plan.update({"unpack": 2.0, "regs:8:3:128": 1.5, "regs:4:4:128": 1.0})
    assert _design() == "regs:4:4:128"
    key = gemm.design_key(torch.zeros(300, 256, dtype=torch.int8), [torch.zeros(n, 128) for n in (64, 32)], None,
                          torch.bfloat16)
    assert gemm.DESIGN_TIMES == {key: plan}  # the times the choice rested on, for reports
    timed = len(runs)
    assert _design(m=400) == "regs:4:4:128" and len(runs) == timed  # same power-of-two bucket: cached
    plan.update({"unpack": 0.5})
    assert _design(m=600) == "unpack"  # another bucket: timed again


def test_design_times_average_several_graphs_and_the_unpack_design_needs_a_margin(timed_designs, monkeypatch):
    """Each candidate's time is the mean over DESIGN_GRAPHS captures (one lucky graph does not pick it), and the unpack
    design, which allocates an int8 copy of the weights per call, must beat the best register design by the margin."""
    plan, _ = timed_designs
    graphs = {"unpack": iter([0.5] + [1.6] * (gemm.DESIGN_GRAPHS - 1))}  # fastest once, slower on average
    plan.update({"unpack": None, "regs:8:3:128": 1.2, "regs:4:4:128": 1.1})
    monkeypatch.setattr(gemm, "_replay_median_ms",
                        lambda fn: next(graphs[fn.args[0]]) if fn.args[0] in graphs else plan[fn.args[0]])
    assert _design() == "regs:4:4:128"
    monkeypatch.setattr(gemm, "_designs", {})
    graphs["unpack"] = iter([gemm.UNPACK_MARGIN * 1.1 * 1.01] * gemm.DESIGN_GRAPHS)  # faster, within the margin
    assert _design() == "regs:4:4:128"
    monkeypatch.setattr(gemm, "_designs", {})
    graphs["unpack"] = iter([gemm.UNPACK_MARGIN * 1.1 * 0.99] * gemm.DESIGN_GRAPHS)  # past the margin
    assert _design() == "unpack"


def test_first_register_design_is_kept_unless_another_beats_it_by_the_margin(timed_designs):
    """The register designs' times can be within a few percent of each other, and the choice then follows noise: the
    first design (measured the fastest on most shapes) is kept unless another is faster by more than REGS_MARGIN, and
    the first that runs takes its place when it fails."""
    plan, _ = timed_designs
    first, second, third = gemm.REGS_DESIGNS
    plan.update({"unpack": 5.0, first: 1.0, second: gemm.REGS_MARGIN * 1.01, third: 2.0})
    assert _design() == first
    plan.update({second: gemm.REGS_MARGIN * 0.99})
    assert _design(m=600) == second
    plan.update({first: RuntimeError("no sm_90 build"), second: 1.0, third: gemm.REGS_MARGIN * 1.01})
    with pytest.warns(UserWarning, match=f"{first} failed"):
        assert _design(m=1200) == second
    plan.update({"unpack": gemm.UNPACK_MARGIN * 0.99})  # the unpack design against the register design chosen
    with pytest.warns(UserWarning, match=f"{first} failed"):
        assert _design(m=2400) == "unpack"


def test_design_candidates_are_timed_in_turns(timed_designs, monkeypatch):
    """Every candidate's graphs are captured first (after a garbage collection), then replayed in turns, one graph of
    each per turn: a drift of the GPU's clock during the choice falls on all of them alike."""
    plan, _ = timed_designs
    plan.update({"unpack": 2.0})
    captured, replayed = [], []
    monkeypatch.setattr(gemm.gc, "collect", lambda: captured.append("gc"))  # dead graphs go before any capture
    monkeypatch.setattr(gemm, "_timing_graph", lambda fn, pool: captured.append(fn.args[0]) or fn)
    monkeypatch.setattr(gemm, "_replay_median_ms", lambda fn: replayed.append(fn.args[0]) or plan[fn.args[0]])
    _design()
    candidates = ["unpack", *gemm.REGS_DESIGNS]
    assert captured == ["gc"] + [c for c in candidates for _ in range(gemm.DESIGN_GRAPHS)]
    assert replayed == candidates * gemm.DESIGN_GRAPHS


def test_design_for_very_long_rows_is_the_unpack_pass(timed_designs):
    """K >= MAX_K: the register design's 16x int32 sums could overflow, so it is not timed (nor accepted forced,
    `test_design_off_hopper_is_the_unpack_pass`)."""
    plan, runs = timed_designs
    plan.update({"unpack": 2.0, "regs:8:3:128": 1.0, "regs:4:4:128": 1.0})
    a, w = torch.zeros(2, 256, dtype=torch.int8), [torch.zeros(8, gemm.gemm_regs.MAX_K // 2, dtype=torch.int8)]
    assert gemm.w4a4_design(a, torch.ones(2, 1), w, torch.ones(8), None, torch.float32) == "unpack" and runs == []


def test_failing_register_design_is_left_out_with_a_warning(timed_designs):
    plan, _ = timed_designs
    plan.update({"unpack": 2.0, "regs:8:3:128": RuntimeError("no sm_90 build"), "regs:4:4:128": 3.0})
    with pytest.warns(UserWarning, match="regs:8:3:128 failed"):
        assert _design() == "unpack"


def test_register_design_that_fails_capture_is_left_out(timed_designs, monkeypatch):
    """A design that runs eagerly but cannot be captured into the timing's CUDA graph is left out like one that fails
    to run; the unpack design's failure is the caller's (it is the fallback)."""
    plan, _ = timed_designs
    plan.update({"unpack": 2.0, "regs:4:4:128": 1.0})

    def capture(fn, pool):
        if fn.args[0] == "regs:4:4:128":
            raise RuntimeError("operation not permitted when stream is capturing")
        return fn

    monkeypatch.setattr(gemm, "_timing_graph", capture)
    with pytest.warns(UserWarning, match="regs:4:4:128 failed"):
        assert _design() == "unpack"


def test_design_under_graph_capture_is_not_timed(timed_designs, monkeypatch):
    plan, runs = timed_designs
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert _design() == next(iter(gemm.REGS_DESIGNS)) and runs == [] and gemm._designs == {}


if __name__ == "__main__":  # the compilation for `compiled`, in a process of its own
    print(json.dumps({**compile_cases(_compile, CASES), **compile_cases(_compile_swiglu, SWIGLU_CASES)}))
