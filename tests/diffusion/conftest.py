import pytest

from tests.diffusion.fakes import single_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with single_thread():
        yield
