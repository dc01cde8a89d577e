"""Programmatic dependent launch (`kernels/pdl.py`): when kernels take it, and that the activation kernels compiled
for sm_90 with it wait for the previous kernel before their first memory access. Its results on a GPU, with and
without it, are compared in `test_gemm_cuda.py` (`-k pdl`); the register GEMM's compile check is in
`test_gemm_regs.py`. Compilation runs in a fresh process with TRITON_INTERPRET=0 (`test_gemm_regs.py` says why)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from faircalib.kernels import gemm, pdl


def test_off_by_default_and_never_off_the_gpu(monkeypatch):
    assert os.environ.get("FAIRCALIB_PDL") == "1" or not pdl.ENABLED
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert not pdl.active(torch.device("cpu"))  # the interpreter and CPU kernels launch without it
    assert pdl.launch_options(False) == {"PDL": False}
    assert pdl.launch_options(True) == {"PDL": True, "launch_pdl": True}


def test_enabled_on_cpu_changes_nothing(monkeypatch):
    """FAIRCALIB_PDL=1 on a machine without a GPU: the kernels run as without it."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 64, generator=gen)
    left, right = torch.eye(8), torch.eye(8)
    want = gemm.quantize_act_packed(x, None, left, right, None, 4)
    monkeypatch.setattr(pdl, "ENABLED", True)
    got = gemm.quantize_act_packed(x, None, left, right, None, 4)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# (kernel, pointer dtypes by argument, constexprs): each activation kernel as `gemm._quantize_packed` launches it.
KERNELS = {
    "tile": ("_quantize_act_kernel", dict(N1=64, N2=64, GATED=False, HAS_CS=True, HAS_LEFT=True, HAS_RIGHT=True,
                                          HAS_CLIP=True, BITS=4, B1=64, B2=64, TOKENS=1, STAGES=2, RECIP=True)),
    "split": ("_quantize_act_split_kernel", dict(N1=128, N2=148, HAS_LEFT=True, HAS_RIGHT=True, HAS_CLIP=True, BITS=4,
                                                 B1=128, BA=128, BB=32, TRANSPOSED=False, STAGES=2)),
    "chunked": ("_quantize_act_chunked_kernel", dict(GATED=False, HAS_CS=False, HAS_LEFT=True, HAS_CLIP=True, BITS=4,
                                                     B1=128, BJ=64, BK=32, SCRATCH_W=192)),
}
POINTERS = {"x_ptr": "*bf16", "gate_ptr": "*bf16", "left_ptr": "*bf16", "right_ptr": "*bf16", "codes_ptr": "*i8"}


def _compile_all() -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptx = {}
    for path, (name, constexprs) in KERNELS.items():
        kernel = getattr(gemm, name)
        for with_pdl in (False, True):
            values = dict(constexprs, PDL=with_pdl)
            signature = {arg: "constexpr" if arg in values else POINTERS.get(arg, "*fp32" if arg.endswith("_ptr")
                                                                              else "i32")
                         for arg in kernel.arg_names}
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=values),
                                      target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": 8, "launch_pdl": with_pdl})
            ptx[f"{path}/{with_pdl}"] = compiled.asm["ptx"]
    return ptx


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("path", list(KERNELS))
def test_activation_kernels_wait_before_their_first_memory_access(compiled, path):
    without, with_pdl = compiled[f"{path}/False"], compiled[f"{path}/True"]
    assert "griddepcontrol" not in without
    body = with_pdl[with_pdl.index("griddepcontrol.wait"):]
    assert "griddepcontrol.launch_dependents" in body
    before = with_pdl[:with_pdl.index("griddepcontrol.wait")]
    assert "ld.global" not in before and "st.global" not in before


if __name__ == "__main__":  # the compilation for `compiled`, in a process of its own
    print(json.dumps(_compile_all()))
