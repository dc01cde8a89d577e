import pytest

from faircalib.zoo.tasks import GEN_LENGTH, TASKS, Problem, exact_match, load_tasks, split_of
from faircalib.zoo.tokenizer import CharTokenizer


def _solve(problem: Problem) -> str:
    """Independent recomputation of each task's answer from its prompt."""
    body = problem.prompt.removesuffix("=")
    if problem.task == "add":
        a, b = body.split("+")
        return str(int(a) + int(b))
    if problem.task == "sort":
        return "".join(sorted(body.removeprefix("sort:")))
    if problem.task == "rev":
        return body.removeprefix("rev:")[::-1]
    assert problem.task == "arith" and len(body) == 5
    return str(eval(body))  # noqa: S307 - the prompt is five checked characters: digit op digit op digit


def test_deterministic():
    assert load_tasks("heldout") == load_tasks("heldout")
    assert load_tasks("train", n=50, seed=3) == load_tasks("train", n=50, seed=3)
    assert load_tasks("train", n=50, seed=3) != load_tasks("train", n=50, seed=4)


def test_splits_disjoint_for_any_seed():
    heldout = {p.prompt for p in load_tasks("heldout")}
    for seed in range(3):
        train = {p.prompt for p in load_tasks("train", n=3000, seed=seed)}
        assert not heldout & train
    assert all(split_of(p) == "heldout" for p in heldout)


def test_sizes_tasks_and_unique_heldout():
    heldout = load_tasks("heldout", n=40)
    assert [p.task for p in heldout] == [t for t in TASKS for _ in range(40)]
    assert len({p.prompt for p in heldout}) == len(heldout)
    assert [p.task for p in load_tasks("train", n=5, tasks=["rev"])] == ["rev"] * 5


def test_answers_verifiable_and_fit_the_model():
    tok = CharTokenizer()
    for p in load_tasks("heldout") + load_tasks("train", n=500):
        assert p.answer == _solve(p), p
        assert len(p.prompt) <= 24 and len(p.answer) < GEN_LENGTH
        assert tok.decode(tok.encode(p.prompt + p.answer)) == p.prompt + p.answer


def test_exact_match():
    assert exact_match(" 17", "17") and not exact_match("170", "17")


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_tasks("test")
    with pytest.raises(ValueError, match="unknown"):
        load_tasks("train", tasks=["mul"])
    with pytest.raises(ValueError, match="ask for fewer"):
        load_tasks("heldout", n=2000, tasks=["arith"])
