"""The shipped tiny models load through the public loader and answer held-out problems."""
import pytest
import torch

from faircalib.models import get_adapter, load_model, load_tokenizer
from faircalib.zoo import SHIPPED, checkpoint_dir, load_tasks
from faircalib.zoo.evaluate import answers
from faircalib.zoo.tokenizer import CharTokenizer

MAX_BYTES = 12 * 2**20


@pytest.fixture(params=SHIPPED)
def shipped(request):
    path = checkpoint_dir(request.param)
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{request.param} is not shipped in this checkout ({path})")
    return request.param


def test_checkpoint_files_and_size(shipped):
    path = checkpoint_dir(shipped)
    assert (path / "model.safetensors").stat().st_size <= MAX_BYTES
    assert {"config.json", "tokenizer.json", "train_log.json"} <= {p.name for p in path.iterdir()}


def test_loads_and_answers_heldout_problems(shipped):
    model = load_model(shipped)
    tokenizer = load_tokenizer(shipped)
    assert tokenizer == CharTokenizer()
    adapter = get_adapter(model)
    assert adapter.mask_token_id == tokenizer.mask_token_id
    assert len(adapter.blocks) >= 4 and model.config.vocab_size == tokenizer.vocab_size
    # One problem of each task; these models get >= 90% of the held-out set right, so a miss here is a regression.
    problems = load_tasks("heldout", n=1)
    preds = answers(model, tokenizer, [p.prompt for p in problems], generator=torch.Generator().manual_seed(0))
    assert preds == [p.answer for p in problems]
