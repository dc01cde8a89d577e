"""Calibration sequences: task problems left-padded so every answer region is the trailing gen_length positions,
and random windows of a long text."""
import pytest
import torch

from faircalib.calib.data import task_sequences, text_sequences
from faircalib.zoo import CharTokenizer, Problem

TOKENIZER = CharTokenizer()


def test_task_sequences_put_answers_in_the_trailing_window():
    problems = [Problem("add", "12+3=", "15"), Problem("rev", "rev:abcdefg=", "gfedcba"), Problem("add", "1+1=", "2")]
    ids, mask = task_sequences(TOKENIZER, problems, gen_length=8)
    width = len("rev:abcdefg=") + 8
    assert ids.shape == mask.shape == (3, width) and ids.dtype == torch.long and mask.dtype == torch.bool
    for row, p in enumerate(problems):
        answer = ids[row, -8:]
        assert TOKENIZER.decode(answer) == p.answer
        assert answer[len(p.answer):].eq(TOKENIZER.eos_token_id).all()
        real = len(p.prompt) + 8
        assert mask[row].sum() == real and mask[row, -real:].all()
        assert ids[row, :width - real].eq(TOKENIZER.pad_token_id).all()
        assert TOKENIZER.decode(ids[row, width - real:width - 8]) == p.prompt


def test_task_sequences_answer_may_fill_the_window():
    ids, mask = task_sequences(TOKENIZER, [Problem("sort", "sort:321=", "123")], gen_length=3)
    assert TOKENIZER.decode(ids[0]) == "sort:321=123" and mask.all()


def test_task_sequences_errors():
    with pytest.raises(ValueError, match="no calibration problems"):
        task_sequences(TOKENIZER, [], gen_length=8)
    with pytest.raises(ValueError, match="longer than gen_length=2"):
        task_sequences(TOKENIZER, [Problem("add", "99+1=", "100")], gen_length=2)


def test_text_sequences_are_windows_of_the_text():
    text = torch.arange(100)
    windows = text_sequences(text, seq_len=12, n=5, generator=torch.Generator().manual_seed(0))
    assert windows.shape == (5, 12)
    for window in windows:
        start = int(window[0])
        assert torch.equal(window, text[start:start + 12])
    again = text_sequences(text, seq_len=12, n=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(windows, again)


@pytest.mark.parametrize("seq_len, n", [(0, 2), (4, 0), (-1, 2)])
def test_text_sequences_need_a_window_and_a_count(seq_len, n):
    with pytest.raises(ValueError, match="must both be >= 1"):
        text_sequences(torch.arange(50), seq_len=seq_len, n=n, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("length", [12, 5])
def test_text_sequences_need_a_longer_text(length):
    with pytest.raises(ValueError, match="need more than seq_len=12"):
        text_sequences(torch.arange(length), seq_len=12, n=2, generator=torch.Generator().manual_seed(0))
