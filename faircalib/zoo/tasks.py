"""Task suite of the tiny dLLMs: short prompts with one verifiable answer, generated from a seed.

| task  | prompt          | answer  |
|-------|-----------------|---------|
| add   | `123+45=`       | `168`   |
| sort  | `sort:52913=`   | `12359` |
| rev   | `rev:abcdef=`   | `fedcba`|
| arith | `3*4+5=`        | `17`    |

Splits are disjoint by construction: a prompt belongs to `heldout` when the CRC-32 of its text falls in one
bucket out of `HELDOUT_BUCKETS`, to `train` otherwise, whatever the seed. So no seed of the training data can
ever produce a held-out prompt. Held-out prompts are unique within a task; training prompts may repeat (the
`arith` space has only 9000 prompts).
"""
from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Callable

GEN_LENGTH = 16  # answer region: answer + eos padding; every answer is shorter, so an eos always ends it
HELDOUT_BUCKETS = 8
SPLITS = ("train", "heldout")
DEFAULT_SIZE = {"train": 20_000, "heldout": 64}  # problems per task
HELDOUT_SEED = 0
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Problem:
    task: str
    prompt: str
    answer: str


def _number(rng: random.Random) -> int:
    """1 to 3 digits, each length equally likely (small numbers would be rare if drawn uniformly)."""
    digits = rng.randint(1, 3)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = _number(rng), _number(rng)
    return f"{a}+{b}=", str(a + b)


def _sort(rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 8)))
    return f"sort:{digits}=", "".join(sorted(digits))


def _rev(rng: random.Random) -> tuple[str, str]:
    text = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8)))
    return f"rev:{text}=", text[::-1]


def _arith(rng: random.Random) -> tuple[str, str]:
    """Two operations on single digits, `*` before `+`/`-`, e.g. `3+4*5=` -> `23`, `2-7+1=` -> `-4`."""
    a, b, c = (rng.randint(0, 9) for _ in range(3))
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    apply = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}
    if op2 == "*" and op1 != "*":
        value = apply[op1](a, b * c)
    else:
        value = apply[op2](apply[op1](a, b), c)
    return f"{a}{op1}{b}{op2}{c}=", str(value)


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "sort": _sort,
    "rev": _rev,
    "arith": _arith,
}


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, fixed by its text alone."""
    return "heldout" if zlib.crc32(prompt.encode()) % HELDOUT_BUCKETS == 0 else "train"


def load_tasks(split: str, n: int | None = None, seed: int | None = None, tasks=None) -> list[Problem]:
    """`n` problems per task (default `DEFAULT_SIZE[split]`) of `split`, task by task, in a fixed order.

    The same (split, n, seed, tasks) always gives the same list. Held-out default seed: `HELDOUT_SEED`, so every
    caller evaluates on the same problems; training default seed 0.
    """
    if split not in SPLITS:
        raise ValueError(f"zoo.tasks: split {split!r} is unknown; use one of {SPLITS}")
    names = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"zoo.tasks: tasks {unknown} are unknown; choose from {list(TASKS)}")
    n = DEFAULT_SIZE[split] if n is None else n
    seed = (HELDOUT_SEED if split == "heldout" else 0) if seed is None else seed
    return [p for task in names for p in _draw(task, split, n, seed)]


def _draw(task: str, split: str, n: int, seed: int) -> list[Problem]:
    # A string seed is hashed with SHA-512 by `random`, so the stream is the same in every process.
    rng = random.Random(f"{task}/{split}/{seed}")
    unique = split == "heldout"
    problems, seen = [], set()
    for _ in range(50 * n + 1000):  # bounded: a request larger than the task's prompt space fails below
        if len(problems) == n:
            break
        prompt, answer = TASKS[task](rng)
        if split_of(prompt) != split or (unique and prompt in seen):
            continue
        seen.add(prompt)
        problems.append(Problem(task, prompt, answer))
    if len(problems) == n:
        return problems
    raise ValueError(
        f"zoo.tasks: could only draw {len(problems)} of {n} distinct {split} problems of task {task!r}; ask for fewer"
    )


def exact_match(pred: str, answer: str) -> bool:
    """True when the decoded generation equals the answer (surrounding whitespace ignored)."""
    return pred.strip() == answer.strip()
