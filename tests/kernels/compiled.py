"""Compiling kernels for sm_90 without a GPU, in a process of its own: the interpreter, which the rest of the suite
runs, patches Triton's tensor operators in place, and real compilation in the same process then fails."""
import json
import os
import subprocess
import sys


def run_compile_script(path: str) -> dict:
    """The JSON that the test module at `path`, run as a script with TRITON_INTERPRET=0, prints on its last line."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    done = subprocess.run([sys.executable, path], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])
