"""Test set-up: Triton kernels run on CPU tensors through the Triton interpreter, so CI (no GPU) checks them
against the PyTorch references. TRITON_INTERPRET must be set before Triton is first imported.

On a GPU machine `TRITON_INTERPRET=0 python -m pytest tests` runs the compiled kernels instead (the `*_cuda.py`
files and the CUDA cases); the tests marked `triton_on_cpu`, which need the interpreter, then skip."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test tensors are small and the suite runs one pytest-xdist worker per core: intra-op threads only contend.
torch.set_num_threads(1)

INTERPRETER_NEEDED = ("runs Triton kernels on CPU tensors, which needs TRITON_INTERPRET=1; with TRITON_INTERPRET=0 the "
                      "*_cuda.py tests check the compiled kernels")


def pytest_configure(config):
    config.addinivalue_line("markers", f"triton_on_cpu: {INTERPRETER_NEEDED}")


def pytest_collection_modifyitems(config, items):
    if os.environ["TRITON_INTERPRET"] == "1":
        return
    for item in items:
        if item.get_closest_marker("triton_on_cpu"):
            item.add_marker(pytest.mark.skip(reason=INTERPRETER_NEEDED))


@pytest.fixture
def gen():
    """A local, seeded generator: tests never touch global RNG state."""
    return torch.Generator().manual_seed(0)
