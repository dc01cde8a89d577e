import json

import pytest
import torch

from faircalib.models import get_adapter
from faircalib.zoo.tasks import GEN_LENGTH, Problem, load_tasks
from faircalib.zoo.tokenizer import CharTokenizer
from faircalib.zoo.train import (
    TrainConfig,
    build_model,
    cosine_with_warmup,
    encode_examples,
    main,
    masked_diffusion_loss,
    train,
)


def _fixed_batch_loss(model, tok):
    batch = encode_examples(tok, load_tasks("heldout", n=16), GEN_LENGTH)
    with torch.no_grad():
        return masked_diffusion_loss(model, batch, tok.mask_token_id, 1e-3, torch.Generator().manual_seed(1)).item()


def test_encode_examples_layout():
    tok = CharTokenizer()
    batch = encode_examples(tok, [Problem("add", "1+2=", "3"), Problem("rev", "rev:ab=", "ba")], gen_length=4)
    ids, attention, answer = batch["input_ids"], batch["attention_mask"], batch["answer_mask"]
    assert ids.shape == attention.shape == answer.shape == (2, 7 + 4)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert ids[0].tolist() == tok.encode("1+2=3") + [eos] * 3 + [pad] * 3
    assert ids[1].tolist() == tok.encode("rev:ab=ba") + [eos] * 2
    assert answer[0].tolist() == [False] * 4 + [True] * 4 + [False] * 3
    assert attention[0].tolist() == [True] * 8 + [False] * 3 and attention[1].all()
    with pytest.raises(ValueError, match="gen_length"):
        encode_examples(tok, [Problem("rev", "rev:abcde=", "edcba")], gen_length=4)


def test_cosine_with_warmup():
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 10, 100) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.0)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_training_reduces_loss_and_is_seeded(family, small_arch):
    tok = CharTokenizer()
    config = TrainConfig(
        family=family, arch=small_arch[family], steps=60, batch_size=16, lr=1e-2, warmup_steps=5,
        train_per_task=200, log_every=20,
    )
    model = build_model(tok, config)
    before = _fixed_batch_loss(model, tok)
    log = train(model, tok, config, "cpu")
    assert [e["step"] for e in log] == [20, 40, 60]
    assert _fixed_batch_loss(model, tok) < 0.6 * before
    assert train(build_model(tok, config), tok, config, "cpu") == log  # same seed, same run


def test_main_writes_a_loadable_checkpoint(tmp_path, small_arch):
    from faircalib.models import load_model

    out = tmp_path / "ckpt"
    record = main(["--family", "dream", "--out", str(out), "--steps", "3", "--batch-size", "8",
                   "--train-per-task", "20", "--heldout-per-task", "2", "--arch", json.dumps(small_arch["dream"]),
                   "--device", "cpu"])
    assert set(record["heldout_accuracy"]) == {"add", "sort", "rev", "arith", "all"}
    logged = json.loads((out / "train_log.json").read_text())
    assert logged["config"]["steps"] == 3 and logged["data"]["heldout_problems"] == 8
    assert CharTokenizer.load(out) == CharTokenizer()
    model = load_model(str(out))
    assert sum(p.numel() for p in model.parameters()) == record["parameters"]


def test_loss_masks_only_the_answer_region(small_model):
    tok = CharTokenizer()
    batch = encode_examples(tok, load_tasks("heldout", n=8), GEN_LENGTH)
    seen = []
    embed = get_adapter(small_model).embed
    handle = embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    masked_diffusion_loss(small_model, batch, tok.mask_token_id, 1e-3, torch.Generator().manual_seed(0))
    handle.remove()
    noisy = seen[0]
    is_mask = noisy == tok.mask_token_id
    assert is_mask.any() and not (is_mask & ~batch["answer_mask"]).any()
    assert torch.equal(noisy[~is_mask], batch["input_ids"][~is_mask])


def test_loss_at_full_masking_is_mean_answer_cross_entropy(small_model):
    # eps -> 1 masks every answer token with p = 1: the loss is then the plain mean CE over the answer region.
    tok = CharTokenizer()
    batch = encode_examples(tok, load_tasks("heldout", n=4), GEN_LENGTH)
    loss = masked_diffusion_loss(small_model, batch, tok.mask_token_id, 1 - 1e-9, torch.Generator().manual_seed(0))
    answer = batch["answer_mask"]
    noisy = torch.where(answer, tok.mask_token_id, batch["input_ids"])
    with torch.no_grad():
        logits = get_adapter(small_model).logits(noisy, batch["attention_mask"])
    expected = torch.nn.functional.cross_entropy(logits[answer], batch["input_ids"][answer])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
