"""`faircalib calibrate` (and the shared recipe options) through `faircalib.cli.main`, on a saved random tiny
model: a run writes the calibrated model and its log; bad settings are usage errors before any model loads."""
import json
import re
from pathlib import Path

import pytest
import torch

from faircalib.calib.prior import PositionPrior, PriorConfig
from faircalib.cli import main
from faircalib.models import save_model
from faircalib.zoo import TASKS
from tests.calib.conftest import saved_tiny_checkpoint, tiny_model


@pytest.fixture
def saved_model(tmp_path):
    return saved_tiny_checkpoint("dream", tmp_path / "tiny")



def test_calibrate_rtn(saved_model, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["calibrate", "--model", str(saved_model), "--method", "rtn", "--out", str(out),
                   "--n-calib", str(len(TASKS)), "--wbits", "3", "--abits", "16"])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    log = json.loads((out / "calibration.json").read_text())
    assert printed["method"] == "rtn" and printed["fingerprint"] == log["fingerprint"]
    assert len(printed["block_losses"]) == 2
    assert log["recipe"]["method"] == "rtn" and log["recipe"]["qconfig"]["weight"]["bits"] == 3
    assert log["recipe"]["qconfig"]["act"] is None and len(log["blocks"]) == 2
    assert (out / "calibrated.pt").exists() and not (out / "prior.json").exists()


@pytest.mark.parametrize("fmt", ["faircalib", "compressed-tensors"])
def test_export_carries_the_tokenizer_and_generates_on_its_own(saved_model, tmp_path, capsys, fmt):
    out = tmp_path / "out"
    assert main(["calibrate", "--model", str(saved_model), "--method", "rtn", "--out", str(out),
                 "--n-calib", str(len(TASKS)), "--export", fmt]) == 0
    exported = Path(json.loads(capsys.readouterr().out)["export"])
    assert (exported / "tokenizer.json").read_bytes() == (saved_model / "tokenizer.json").read_bytes()
    assert not list(exported.glob(".*.tmp"))
    if fmt == "faircalib":  # faircalib loads its own format; compressed-tensors is for other runtimes
        assert main(["generate", "--model", str(exported), "--prompt", "1+2=", "--sampler", "dream",
                     "--steps", "2", "--gen-length", "4"]) == 0
        assert capsys.readouterr().out.strip()


def test_calibrate_fair_with_a_saved_prior(saved_model, tmp_path, capsys):
    """--prior replaces Stage I: no probe runs, and the run's prior is the saved one."""
    prior = PositionPrior(PriorConfig(window=8), torch.linspace(1.0, 2.0, 16, dtype=torch.float64), seq_len=8)
    prior.save(tmp_path / "saved_prior.json")
    out = tmp_path / "out"
    status = main(["calibrate", "--model", str(saved_model), "--method", "fair", "--out", str(out),
                   "--n-calib", str(len(TASKS)), "--epochs", "0", "--prior", str(tmp_path / "saved_prior.json")])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["stage1_seconds"] == 0
    log = json.loads((out / "calibration.json").read_text())
    assert log["recipe"]["method"] == "fair" and len(log["blocks"]) == 2
    assert not (out / "prior.json").exists()


def test_model_without_the_task_tokenizer_is_a_usage_error(tmp_path, capsys):
    directory = tmp_path / "no-tokenizer"
    save_model(tiny_model("llada"), directory)
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--model", str(directory), "--method", "rtn", "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "--calib-text" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--prior", "missing.json"], r"argument --prior: '.*missing.json': no such file"),
    (["--prior", "bad.json"], r"--prior .*bad.json: not a prior written by PositionPrior.save \(KeyError"),
    (["--prior", "broken.json"], r"--prior .*broken.json: not a prior written by PositionPrior.save \(JSONDecodeError"),
    (["--calib-text", "missing.txt"], r"argument --calib-text: '.*missing.txt': no such file"),
    (["--calib-text", "text.txt"], r"--calib-text is tokenized with the checkpoint's Hugging Face tokenizer, and .* "
                                   r"has none that loads"),
])
def test_bad_input_files_are_usage_errors_before_calibrating(saved_model, tmp_path, capsys, extra, message):
    (tmp_path / "bad.json").write_text("{}")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "text.txt").write_text("1+2=3 " * 100)
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--model", str(saved_model), "--method", "fair", "--out", str(tmp_path / "out"),
              *[str(tmp_path / a) if a.endswith((".json", ".txt")) else a for a in extra]])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_a_group_size_the_model_cannot_take_is_a_usage_error_before_stage_one(saved_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--model", str(saved_model), "--method", "fair", "--group-size", "7",
              "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert re.search(r"block 0 linear '\w+': group_size 7 does not divide in_features \d+", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # nothing ran: no prior, no state


def test_a_missing_model_is_a_usage_error_without_the_calib_text_hint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--model", str(tmp_path / "nope"), "--method", "rtn", "--out", str(tmp_path / "out")])
    error_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the usage text, which lists the options
    assert exit_.value.code == 2 and "is not a checkpoint directory" in error_line
    assert "--calib-text" not in error_line


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--method", "bogus"], r"unknown calibration method 'bogus'"),
    (["calibrate", "--method", "rtn", "--wbits", "9"], r"bits must be an int in 2..8"),
    (["calibrate", "--method", "rtn", "--epochs", "-1"], r"epochs must be >= 0"),
    (["calibrate", "--method", "rtn", "--abits", "0"], r"--abits must be 2..8, or 16 to keep activations; got 0"),
    (["calibrate", "--method", "fair", "--lr", "0"], r"lr and clip_lr must be > 0 \(got 0.0, 0.0\); to learn nothing"),
    (["calibrate", "--method", "rtn", "--n-calib", "0"], r"argument --n-calib: must be at least 1, got 0"),
    (["calibrate", "--method", "rtn", "--seq-len", "1k"], r"argument --seq-len: '1k' is not an integer"),
    (["calibrate", "--method", "rtn", "--wbits", "8", "--export", "faircalib"],
     r"--export faircalib: .*8-bit weights \(at most 4\) in q, k, v, o, gate, up, down"),
    (["calibrate", "--method", "quarot", "--export", "compressed-tensors"],
     r"--export compressed-tensors: .*method 'quarot' puts online input transforms"),
    (["compare", "--methods", "fp,bogus"], r"--methods: unknown \['bogus'\]"),
    (["compare", "--n-eval", "0"], r"argument --n-eval: must be at least 1, got 0"),
])
def test_bad_settings_are_usage_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
