from faircalib.zoo.report import INPUT_OF, first_step_inputs, markdown
from faircalib.zoo.tokenizer import CharTokenizer


def test_first_step_inputs_left_pads_and_masks():
    tok = CharTokenizer()
    ids, mask = first_step_inputs(tok, ["1+2=", "rev:ab="], gen_length=3)
    assert ids.shape == mask.shape == (2, 10)
    assert ids[0].tolist() == [tok.pad_token_id] * 3 + tok.encode("1+2=") + [tok.mask_token_id] * 3
    assert ids[1].tolist() == tok.encode("rev:ab=") + [tok.mask_token_id] * 3
    assert mask[0].tolist() == [False] * 3 + [True] * 7 and mask[1].all()


def test_markdown_tables():
    stats = [{"block": 0, "role": r, "max": 2.0, "median": 0.5, "ratio": 4.0} for r in INPUT_OF]
    result = {"model": "m", "accuracy_fp": {"add": 1.0, "all": 0.5}, "accuracy_w4a4_rtn": {"add": 0.25, "all": 0.125},
              "activation_stats": stats}
    text = markdown([result])
    assert "| m | FP32 | 100.0 | 50.0 |" in text and "| m | W4A4 RTN | 25.0 | 12.5 |" in text
    assert "| 0 | 2.00 / 0.500 | 2.00 / 0.500 | 2.00 / 0.500 | 2.00 / 0.500 |" in text
