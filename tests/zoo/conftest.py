import pytest
import torch


@pytest.fixture
def one_thread():
    """The tiny models' matmuls run faster on one thread, and far faster when the CI machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
