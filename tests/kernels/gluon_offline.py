"""Compiling Gluon kernels for sm_90 without a GPU, for the CI tests that check what Triton builds from them. Gluon has
no interpreter, and the interpreter the rest of the suite runs patches Triton's tensor operators in place, so real
compilation in the same process fails: each test module compiles its cases in a fresh process with
TRITON_INTERPRET=0, running itself as a script that prints `compile_cases`' result as JSON."""
import json
import os
import subprocess
import sys
import tempfile


def resource_usage(cubin: bytes) -> str:
    """cuobjdump's resource line of a cubin ('' where Triton ships no cuobjdump)."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(cuobjdump):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout


def compile_sm90(kernel, signature: dict, constexprs: dict, attrs: dict | None = None):
    """Gluon `kernel` compiled for sm_90 (constexprs["num_warps"] warps): the signature maps each argument name to
    its type ("constexpr" for the constexprs); attrs as a launch specializes them (e.g. pointer divisibility)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    source = GluonASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": constexprs["num_warps"]})


def compile_cases(compile_one, cases) -> dict:
    """{repr(case): {"ptx", "usage"}} of compile_one(*case) for each case."""
    results = {}
    for case in cases:
        compiled = compile_one(*case)
        results[repr(case)] = {"ptx": compiled.asm["ptx"], "usage": resource_usage(compiled.asm["cubin"])}
    return results


def compiled_in_fresh_process(test_file: str) -> dict:
    """The JSON that `test_file`, run as a script with TRITON_INTERPRET=0, prints last."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, test_file], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])
