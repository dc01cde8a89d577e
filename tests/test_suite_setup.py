"""The test set-up (tests/conftest.py): tests marked `triton_on_cpu` run under the Triton interpreter and skip, with
the reason, when TRITON_INTERPRET=0 (a GPU run of the suite), instead of failing."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKED = "tests/kernels/test_registry.py::test_op_without_a_triton_kernel"


@pytest.mark.parametrize("interpret, outcome", [("1", "1 passed"), ("0", "1 skipped")])
def test_triton_on_cpu_tests_skip_without_the_interpreter(interpret, outcome):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", MARKED],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": interpret})
    assert result.returncode == 0, result.stdout + result.stderr
    assert outcome in result.stdout, result.stdout
    if interpret == "0":
        assert "needs TRITON_INTERPRET=1" in result.stdout, result.stdout
