"""InputMemo: the readers of one input get one result, and only for that very input, unmodified, in the same mode
and with the same dependencies; results are released once every reader has them."""
import copy

import pytest
import torch

from faircalib.calib.input_memo import InputMemo


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, x, scale=2.0):
        def compute():
            self.calls += 1
            return x * scale
        return compute


def _memo(members: int = 3) -> tuple[InputMemo, list[int]]:
    memo = InputMemo()
    return memo, [memo.join() for _ in range(members)]


def test_one_computation_for_every_reader_of_one_input():
    memo, slots = _memo()
    count, x = Counter(), torch.randn(4, 8)
    results = [memo.get(s, x, (), count(x)) for s in slots]
    assert count.calls == 1 and all(r is results[0] for r in results)
    y = torch.randn(4, 8)
    assert torch.equal(memo.get(slots[0], y, (), count(y)), y * 2) and count.calls == 2


def test_equal_values_in_another_tensor_are_recomputed():
    memo, slots = _memo()
    count, x = Counter(), torch.randn(4, 8)
    memo.get(slots[0], x, (), count(x))
    twin = x.clone()
    memo.get(slots[1], twin, (), count(twin))
    assert count.calls == 2


def test_an_input_modified_in_place_is_recomputed():
    memo, slots = _memo()
    count, x = Counter(), torch.randn(4, 8)
    memo.get(slots[0], x, (), count(x))
    x.add_(1.0)
    got = memo.get(slots[1], x, (), count(x))
    assert count.calls == 2 and torch.equal(got, x * 2)


def test_a_view_of_the_input_is_not_the_input():
    memo, slots = _memo()
    count, x = Counter(), torch.randn(4, 8)
    memo.get(slots[0], x, (), count(x))
    memo.get(slots[1], x[:], (), count(x[:]))
    assert count.calls == 2


def test_key_tensors_compare_by_identity_and_version():
    memo, slots = _memo()
    count, x, p = Counter(), torch.randn(4, 8), torch.ones(3)
    memo.get(slots[0], x, (p, "spec"), count(x))
    memo.get(slots[1], x, (p, "spec"), count(x))
    memo.get(slots[2], x, (p, "spec"), count(x))
    assert count.calls == 1
    memo.get(slots[0], x, (p, "spec"), count(x))  # a new round (every reader had it): recomputed
    assert count.calls == 2
    p.mul_(2)  # e.g. an optimizer step on a shared clip
    memo.get(slots[1], x, (p, "spec"), count(x))
    assert count.calls == 3
    memo.get(slots[2], x, (p.clone(), "spec"), count(x))
    memo.get(slots[0], x, (p, "other"), count(x))
    assert count.calls == 5


def test_grad_mode_is_part_of_the_key():
    memo, slots = _memo()
    w = torch.ones(8, requires_grad=True)
    x = torch.randn(4, 8)
    with torch.no_grad():
        a = memo.get(slots[0], x, (), lambda: x * w)
    b = memo.get(slots[1], x, (), lambda: x * w)
    assert not a.requires_grad and b.requires_grad


def test_released_once_every_reader_read_it():
    memo, slots = _memo(2)
    count, x = Counter(), torch.randn(4, 8)
    memo.get(slots[0], x, (), count(x))
    assert memo._entry is not None
    memo.get(slots[0], x, (), count(x))  # the same reader again: still the stored result
    assert count.calls == 1 and memo._entry is not None
    memo.get(slots[1], x, (), count(x))
    assert count.calls == 1 and memo._entry is None


def test_a_single_reader_stores_nothing():
    memo, (slot,) = _memo(1)
    count, x = Counter(), torch.randn(2, 8)
    memo.get(slot, x, (), count(x))
    memo.get(slot, x, (), count(x))
    assert count.calls == 2 and memo._entry is None


def test_inference_tensors_are_never_served_from_the_memo():
    memo, slots = _memo()
    count = Counter()
    with torch.inference_mode():
        x = torch.randn(4, 8)
        memo.get(slots[0], x, (), count(x))
        x.add_(1.0)  # inference tensors keep no version counter: the memo could not see this
        got = memo.get(slots[1], x, (), count(x))
    assert count.calls == 2 and torch.equal(got, x * 2)


def test_copies_hold_no_stored_input():
    memo, slots = _memo()
    x = torch.randn(4, 8, requires_grad=True)
    memo.get(slots[0], x, (), lambda: x * 2)  # a non-leaf result: deepcopy would refuse it
    for twin in (copy.deepcopy(memo), copy.copy(memo)):
        assert twin.size == 3 and twin._entry is None


@pytest.mark.parametrize("members", [2, 3])
def test_gradients_of_a_shared_result_sum_over_readers(members):
    memo = InputMemo()
    slots = [memo.join() for _ in range(members)]
    w = torch.randn(8, requires_grad=True)
    x = torch.randn(4, 8)
    outs = [memo.get(s, x, (w,), lambda: torch.tanh(x * w)) * (i + 1) for i, s in enumerate(slots)]
    sum(o.sum() for o in outs).backward()
    want = torch.autograd.grad(sum(torch.tanh(x * w).sum() * (i + 1) for i in range(members)), w)[0]
    torch.testing.assert_close(w.grad, want)
