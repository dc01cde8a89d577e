import torch

from faircalib.zoo.evaluate import answers, evaluate
from faircalib.zoo.tasks import TASKS, load_tasks
from faircalib.zoo.tokenizer import CharTokenizer


def test_evaluate_per_task_and_batching_invariant(small_model):
    tok, problems = CharTokenizer(), load_tasks("heldout", n=2)
    whole = evaluate(small_model, tok, problems, generator=torch.Generator().manual_seed(0))
    assert set(whole) == set(TASKS) | {"all"} and all(0 <= v <= 1 for v in whole.values())
    # Greedy default sampler and padding hidden from the model: batch composition must not matter.
    assert evaluate(small_model, tok, problems, batch_size=3) == whole
    preds = answers(small_model, tok, [p.prompt for p in problems])
    assert whole["all"] == sum(p == q.answer for p, q in zip(preds, problems)) / len(problems)
    assert all(isinstance(p, str) for p in preds)
