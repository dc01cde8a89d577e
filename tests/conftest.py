"""Test set-up: Triton kernels run on CPU tensors through the Triton interpreter, so CI (no GPU) checks them
against the PyTorch references. TRITON_INTERPRET must be set before Triton is first imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test tensors are small and the suite runs one pytest-xdist worker per core: intra-op threads only contend.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    """A local, seeded generator: tests never touch global RNG state."""
    return torch.Generator().manual_seed(0)
