import pytest

from faircalib.zoo.tokenizer import CharTokenizer
from faircalib.zoo.train import TrainConfig, build_model

# Small enough for CPU tests; the same code path as the shipped shapes.
SMALL_ARCH = {
    "llada": {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "mlp_hidden_size": 64},
    "dream": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
    },
}


@pytest.fixture
def small_arch():
    return SMALL_ARCH


@pytest.fixture(params=list(SMALL_ARCH))
def small_model(request):
    """An untrained small model of each family (seed 0), for tests that need real modules, not accuracy."""
    return build_model(CharTokenizer(), TrainConfig(family=request.param, arch=SMALL_ARCH[request.param]))
