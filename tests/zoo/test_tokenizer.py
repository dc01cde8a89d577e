import pytest
import torch

from faircalib.zoo.tokenizer import CharTokenizer


def test_round_trip_and_ids():
    tok = CharTokenizer()
    text = "sort:52913=12359"
    ids = tok.encode(text)
    assert len(ids) == len(text) and min(ids) >= 3
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.mask_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len({tok.pad_token_id, tok.mask_token_id, tok.eos_token_id} | set(ids)) == len(set(text)) + 3
    assert tok.vocab_size == 3 + len(tok.alphabet) == len(tok)


def test_decode_stops_at_first_eos_and_skips_pad_and_mask():
    tok = CharTokenizer()
    ids = tok.encode("12") + [tok.mask_token_id, tok.pad_token_id] + tok.encode("3")
    ids += [tok.eos_token_id] + tok.encode("99") + [tok.eos_token_id]
    assert tok.decode(torch.tensor(ids)) == "123"


def test_decode_names_an_id_outside_the_vocabulary():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match=f"id {tok.vocab_size} is outside"):
        tok.decode([tok.encode("1")[0], tok.vocab_size])


def test_unknown_character_names_it():
    with pytest.raises(ValueError, match=r"\['#'\]"):
        CharTokenizer().encode("1#2")


def test_save_load(tmp_path):
    tok = CharTokenizer("abc=")
    path = tok.save(tmp_path / "ckpt")
    assert path.name == "tokenizer.json"
    loaded = CharTokenizer.load(tmp_path / "ckpt")
    assert loaded == tok and loaded.encode("cab=") == tok.encode("cab=")
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_load_rejects_other_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="not a character tokenizer"):
        CharTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        CharTokenizer.load(tmp_path / "missing")
