"""The register-unpack W4A4 GEMM (`kernels/gemm_regs.py`, Gluon) compiled for sm_90 without a GPU: Gluon has no
interpreter, so CI checks that the installed Triton builds it (wgmma on int8 register operands, no spilled
registers); `test_gemm_cuda.py` checks its results on a GPU."""
import os
import subprocess
import tempfile

import pytest
import torch

from faircalib.kernels import gemm

pytestmark = pytest.mark.skipif(gemm.gemm_regs is None, reason="Triton without Gluon")


def _compile(config, has_bias, out_dtype):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    regs = gemm.gemm_regs
    w_desc, a_desc = regs.descriptors(torch.zeros(256, 2048, dtype=torch.int8), torch.zeros(512, 4096,
                                                                                           dtype=torch.int8))
    warps, stages = config
    signature = {"w_desc": mangle_type(w_desc), "a_desc": mangle_type(a_desc), "sa_ptr": "*fp32", "sw_ptr": "*fp32",
                 "bias_ptr": "*fp32", "c_ptr": mangle_type(torch.empty(0, dtype=out_dtype)), "M": "i32", "N": "i32",
                 "K": "i32", "stride_cm": "i32", "HAS_BIAS": "constexpr", "STAGES": "constexpr",
                 "num_warps": "constexpr"}
    source = GluonASTSource(fn=regs._w4a4_regs_kernel, signature=signature,
                            constexprs={"HAS_BIAS": has_bias, "STAGES": stages, "num_warps": warps})
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


@pytest.mark.parametrize("config", [(8, 3), (4, 4)])
@pytest.mark.parametrize("has_bias,out_dtype", [(False, torch.bfloat16), (True, torch.float32)])
def test_register_unpack_gemm_compiles_for_hopper(config, has_bias, out_dtype):
    assert config in gemm.gemm_regs.CONFIGS
    compiled = _compile(config, has_bias, out_dtype)
    ptx = compiled.asm["ptx"]
    assert "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8" in ptx  # int8 tensor cores, A from registers
    assert "0xf0f0f0f0" in ptx.lower()  # the in-register unpack's mask
    cuobjdump = os.path.join(os.path.dirname(__import__("triton").__file__), "backends", "nvidia", "bin", "cuobjdump")
    if os.path.exists(cuobjdump):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True)
        assert "LOCAL:0" in usage.stdout, usage.stdout  # no register spills


def test_design_off_hopper_is_the_unpack_pass():
    """CPU tensors (and the interpreter) run the unpack pass + INT8 GEMM; a bad forced design is refused."""
    a = torch.zeros(4, 256, dtype=torch.int8)
    w = [torch.zeros(8, 128, dtype=torch.int8)]
    assert gemm.w4a4_design(a, torch.ones(4, 1), w, torch.ones(8), None, torch.float32) == "unpack"
    with pytest.raises(ValueError, match="unknown W4A4 design"):
        gemm._w4a4_run("regs:2:2", a, torch.ones(4, 1), w, torch.ones(8), None, torch.float32)
