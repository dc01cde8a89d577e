"""The `faircalib` command, run in-process on tiny random checkpoints saved to a temporary directory."""
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import faircalib.diffusion
from faircalib.cli import COMMANDS, main
from faircalib.diffusion import SamplerConfig, generate
from faircalib.models import build_random, get_adapter, load_model, save_model
from faircalib.zoo import CharTokenizer, checkpoint_dir

TOKENIZER = CharTokenizer()
SIZES = {
    "llada": dict(d_model=32, n_heads=2, n_kv_heads=2, n_layers=1, mlp_hidden_size=64,
                  embedding_size=TOKENIZER.vocab_size, max_sequence_length=64, eos_token_id=TOKENIZER.eos_token_id),
    "dream": dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                  intermediate_size=64, max_position_embeddings=64),
}


def _save_random(family, directory):
    """A tiny random checkpoint of `family` (ids as the character tokenizer's), without a tokenizer."""
    config = dict(SIZES[family], vocab_size=TOKENIZER.vocab_size, mask_token_id=TOKENIZER.mask_token_id)
    save_model(build_random(family, config, generator=torch.Generator().manual_seed(0)), directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{family: directory} of tiny random checkpoints with the character tokenizer."""
    paths = {}
    for family in SIZES:
        path = tmp_path_factory.mktemp(family)
        _save_random(family, path)
        TOKENIZER.save(path)
        paths[family] = str(path)
    return paths


def test_no_arguments_runs_the_default_job(monkeypatch):
    calls = []
    monkeypatch.setattr("faircalib.commands.default.default_job", lambda: calls.append("ran") or 7)
    assert main([]) == 7 and calls == ["ran"]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: faircalib") and all(name in out for name in COMMANDS)


def test_generate_prints_one_answer_per_prompt(checkpoints, capsys):
    assert main(["generate", "--model", checkpoints["llada"], "--prompt", "12+34=", "--prompt", "5=",
                 "--gen-length", "8", "--block-length", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = load_model(checkpoints["llada"])
    prompts = [torch.tensor(TOKENIZER.encode(p)) for p in ("12+34=", "5=")]
    out = generate(model, prompts, SamplerConfig(gen_length=8, steps=8, block_length=4),
                   pad_token_id=TOKENIZER.pad_token_id)
    assert lines == [TOKENIZER.decode(row) for row in out.answer.tolist()]


def test_a_reader_that_closes_the_output_early_stops_generate_quietly(checkpoints):
    """`faircalib generate ... | head -1`: the first answer meets a closed pipe; the command stops with the shell's
    status for it (141), without a traceback."""
    command = [sys.executable, "-m", "faircalib.cli", "generate", "--model", checkpoints["llada"], "--prompt", "1=",
               "--prompt", "2=", "--batch-size", "1", "--gen-length", "4", "--block-length", "4"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the model has loaded, so every answer meets the closed pipe
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_generate_reads_a_prompts_file_in_batches_and_answers_as_one_batch(checkpoints, capsys, tmp_path,
                                                                           monkeypatch):
    """--prompts-file (blank lines skipped, after --prompt) in batches of --batch-size: the answers of one batch, in
    order (the greedy sampler's answer to a prompt does not depend on the batch it runs in); - reads stdin."""
    argv = ["generate", "--model", checkpoints["llada"], "--gen-length", "8", "--block-length", "4"]
    assert main([*argv, "--prompt", "12+34=", "--prompt", "5=", "--prompt", "7+8="]) == 0
    want = capsys.readouterr().out.splitlines()
    path = tmp_path / "prompts.txt"
    path.write_text("5=\n\n  \n7+8=\n", encoding="utf-8")
    assert main([*argv, "--prompt", "12+34=", "--prompts-file", str(path), "--batch-size", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == want and len(want) == 3
    monkeypatch.setattr("sys.stdin", io.StringIO("12+34=\n5=\n7+8=\n"))
    assert main([*argv, "--prompts-file", "-", "--batch-size", "1", "--timing"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == want
    assert re.fullmatch(r"faircalib generate: 24 tokens \(3 prompts x 8 in 3 batches\) in 24 steps, [0-9.]+ s: "
                        r"[0-9.]+ tokens/s, [0-9.]+ ms per step\n", err)


def test_generate_pad_multiple_gives_the_same_answers_in_one_shape(checkpoints, capsys, monkeypatch):
    """--pad-multiple 8: prompts of 6, 2 and 4 tokens in batches of 1 all run as [1, 8] (padded), answer as
    unpadded, and --timing warms that shape up once."""
    argv = ["generate", "--model", checkpoints["llada"], "--gen-length", "8", "--block-length", "4",
            "--prompt", "12+34=", "--prompt", "5=", "--prompt", "7+8=", "--batch-size", "1"]
    assert main(argv) == 0
    want = capsys.readouterr().out
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: None)  # Inductor: minutes on a CPU
    shapes, real_generate = [], faircalib.diffusion.generate

    def generate_and_record_the_shape(model, ids, *args, **kwargs):
        shapes.append(tuple(ids.shape))
        return real_generate(model, ids, *args, **kwargs)

    monkeypatch.setattr(faircalib.diffusion, "generate", generate_and_record_the_shape)
    assert main([*argv, "--pad-multiple", "8", "--compile", "--timing"]) == 0
    assert capsys.readouterr().out == want
    assert shapes == [(1, 8)] * 4  # one warm-up, three timed
    assert main([*argv[:7], "--prompt", "", "--pad-multiple", "8"]) == 0  # unconditional: [1, 0] stays [1, 0]
    assert len(capsys.readouterr().out.splitlines()) == 1 and shapes[-1] == (1, 0)
    with pytest.raises(SystemExit):
        main([*argv, "--pad-multiple", "0"])
    assert "argument --pad-multiple: must be at least 1, got 0" in capsys.readouterr().err


def test_generate_trace_shows_every_step(checkpoints, capsys):
    assert main(["generate", "--model", checkpoints["dream"], "--prompt", "7+8=", "--trace",
                 "--sampler", "dream", "--gen-length", "6", "--steps", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 + 1 + 1  # three steps, the final state, the answer
    assert lines[0].split()[:3] == ["step", "0", "7+8=______"]
    # Dream on the grid 1, .667, .334, .001: floor(6 * .333) = 1, floor(5 * .499) = 2, then the remaining 3
    assert [line.split()[-1] for line in lines[:3]] == ["+1", "+2", "+3"]
    assert lines[3].startswith("final    7+8=") and "_" not in lines[3]


def _hf_tokenizer(directory):
    """A word-level Hugging Face fast tokenizer (digits and operators as words, <bos> prepended) saved to directory:
    what a real checkpoint ships instead of the task-suite tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<mask>", "<eos>", "<bos>", "<unk>", *"0123456789", "+", "="]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>", mask_token="<mask>")
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_generate_with_a_hugging_face_tokenizer(tmp_path, capsys):
    """A checkpoint whose tokenizer is a Hugging Face one (real LLaDA/Dream and their exports) generates through it:
    its own encoding (the <bos> included), the answer decoded up to the first eos without special tokens."""
    _save_random("llada", tmp_path)
    tokenizer = _hf_tokenizer(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "1 2 +", "--gen-length", "4", "--steps", "2"]) == 0
    prompt = tokenizer("1 2 +")["input_ids"]
    assert prompt[0] == 3
    out = generate(load_model(tmp_path), [torch.tensor(prompt)], SamplerConfig(gen_length=4, steps=2), pad_token_id=0)
    answer = out.answer[0].tolist()
    answer = answer[:answer.index(2)] if 2 in answer else answer
    assert capsys.readouterr().out == tokenizer.decode(answer, skip_special_tokens=True) + "\n"


@pytest.mark.parametrize("argv, hint", [(["eval"], "not a character tokenizer"),
                                        (["compare", "--methods", "fp"], "not a character tokenizer"),
                                        (["calibrate", "--method", "rtn"], "pass --calib-text FILE")])
def test_task_suite_commands_on_a_hugging_face_tokenizer_are_usage_errors(tmp_path, capsys, argv, hint):
    _save_random("llada", tmp_path)
    _hf_tokenizer(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main([argv[0], "--model", str(tmp_path), *argv[1:], *(["--out", str(tmp_path / "out")] if argv[0] != "eval"
                                                              else [])])
    assert exit_.value.code == 2
    assert hint in capsys.readouterr().err


def test_a_real_checkpoint_calibrates_exports_and_generates_with_its_own_tokenizer(tmp_path, capsys):
    """The path of a real LLaDA checkpoint, on a random tiny one with a Hugging Face tokenizer: calibrate on local
    text (--calib-text), export the packed W4A4 model (its tokenizer files copied), generate from the export."""
    _save_random("llada", tmp_path)
    _hf_tokenizer(tmp_path)
    (tmp_path / "text.txt").write_text("1 2 + 3 4 = 4 6 " * 50)
    assert main(["calibrate", "--model", str(tmp_path), "--method", "rtn", "--out", str(tmp_path / "out"),
                 "--calib-text", str(tmp_path / "text.txt"), "--seq-len", "16", "--n-calib", "4",
                 "--export", "faircalib"]) == 0
    exported = json.loads(capsys.readouterr().out)["export"]
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in Path(exported).iterdir()}
    assert main(["generate", "--model", exported, "--prompt", "1 2 +", "--gen-length", "4", "--steps", "2"]) == 0
    assert capsys.readouterr().err == ""


def test_a_calibration_text_shorter_than_one_window_is_a_usage_error(tmp_path, capsys):
    _save_random("llada", tmp_path)
    _hf_tokenizer(tmp_path)
    (tmp_path / "text.txt").write_text("1 2 + 3 4 = 4 6")
    with pytest.raises(SystemExit) as exit_:
        main(["calibrate", "--model", str(tmp_path), "--method", "rtn", "--out", str(tmp_path / "out"),
              "--calib-text", str(tmp_path / "text.txt"), "--seq-len", "64"])
    assert exit_.value.code == 2
    assert "need more than seq_len=64; give a longer text or a smaller --seq-len" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_without_any_tokenizer_is_a_usage_error(tmp_path, capsys):
    _save_random("llada", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(tmp_path), "--prompt", "1"])
    assert exit_.value.code == 2
    assert "no tokenizer.json" in capsys.readouterr().err


def test_generate_compile_compiles_every_block_first(checkpoints, capsys, monkeypatch):
    """--compile runs `Module.compile` on each block before the first step (recorded here instead of compiling:
    Inductor on the CPU takes minutes); the answer is the uncompiled one."""
    argv = ["generate", "--model", checkpoints["llada"], "--prompt", "12+34=", "--gen-length", "4", "--steps", "2"]
    assert main(argv) == 0
    answer = capsys.readouterr().out
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: compiled.append(self))
    assert main([*argv, "--compile"]) == 0
    assert capsys.readouterr().out == answer
    blocks = get_adapter(load_model(checkpoints["llada"])).blocks
    assert len(compiled) == len(blocks) and all(type(m) is type(blocks[0]) for m in compiled)


@pytest.mark.parametrize("extra, runs, summary", [
    ([], 1, r"16 tokens \(2 prompts x 8\) in 8 steps"),
    (["--compile"], 2, r"16 tokens \(2 prompts x 8\) in 8 steps"),
    # batches of shapes (1, 6), (1, 2), (1, 2): the second (1, 2) batch has been warmed up already
    (["--compile", "--prompt", "7=", "--batch-size", "1"], 5, r"24 tokens \(3 prompts x 8 in 3 batches\) in 24 steps"),
])
def test_generate_timing_reports_tokens_per_second_after_a_warm_up_where_one_is_due(checkpoints, capsys, monkeypatch,
                                                                                    extra, runs, summary):
    argv = ["generate", "--model", checkpoints["llada"], "--prompt", "12+34=", "--prompt", "5=", "--gen-length", "8",
            "--block-length", "4"]
    prompts = [arg for arg in extra if arg.endswith("=")]
    assert main([*argv, *[f"--prompt={p}" for p in prompts]]) == 0
    answers = capsys.readouterr().out
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: None)  # Inductor: minutes on a CPU
    calls = []
    real_generate = faircalib.diffusion.generate
    monkeypatch.setattr(faircalib.diffusion, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    assert main([*argv, "--timing", *extra]) == 0
    captured = capsys.readouterr()
    assert captured.out == answers and len(calls) == runs
    assert re.fullmatch(rf"faircalib generate: {summary}, [0-9.]+ s: [0-9.]+ tokens/s, [0-9.]+ ms per step\n",
                        captured.err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt", "12?"], "not in the alphabet"),
        (["--prompt", "1=", "--gen-length", "10", "--block-length", "4"], "not divisible by block_length=4"),
        (["--prompt", "1=", "--sampler", "dream", "--remasking", "random"], "does not exist for sampler 'dream'"),
        (["--prompt", "1=", "--cuda-graph"], "needs a CUDA device"),
        (["--prompt", "1=", "--keep-unpacked"], "needs a W4A4 checkpoint"),
        ([], "no prompts: give --prompt"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "--prompts-file /nonexistent/prompts.txt: "),
        (["--prompt", "1=", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["--prompt", "1=", "--pad-multiple", "-2"], "argument --pad-multiple: must be at least 1, got -2"),
    ],
)
def test_generate_usage_errors(checkpoints, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", checkpoints["llada"], *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("device, cuda_devices, message", [
    ("banana", 0, "is not a torch device"), ("cuda", 0, "no CUDA device here"),
    ("cuda:2", 2, "has 2 CUDA device(s), cuda:0 to cuda:1"), ("xpu", 0, "is not usable here")])
@pytest.mark.parametrize("command", [["generate", "--prompt", "1="], ["eval"], ["calibrate", "--method", "rtn"]])
def test_a_device_this_machine_lacks_is_a_usage_error(monkeypatch, capsys, tmp_path, command, device, cuda_devices,
                                                      message):
    """Checked while parsing, before any model loads (the CPU torch wheel raised an AssertionError deep inside)."""
    if device == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        pytest.skip("this machine has an XPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_devices > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_devices)
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--device", device, "--out", str(tmp_path)] if command[0] == "calibrate"
             else [*command, "--device", device])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device" in err and message in err


@pytest.mark.parametrize("command, out, message", [
    (["calibrate", "--method", "rtn"], "a_file", "is a file; give a directory"),
    (["compare", "--methods", "fp"], "a_file", "is a file; give a directory"),
    (["eval"], "", "is a directory; give a file path")])
def test_out_of_the_wrong_kind_is_a_usage_error(tmp_path, capsys, command, out, message):
    (tmp_path / "a_file").write_text("kept")
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--out", str(tmp_path / out)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "kept"


def test_eval_writes_the_report_atomically(checkpoints, capsys, tmp_path):
    out = tmp_path / "reports" / "report.json"
    assert main(["eval", "--model", checkpoints["dream"], "--out", str(out), "--n", "2", "--tasks", "add", "rev",
                 "--batch-size", "3", "--seed", "5"]) == 0
    report = json.loads(out.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["n"] == 4 and report["seed"] == 5 and report["split"] == "heldout"
    assert set(report["tasks"]) == {"add", "rev"}
    assert all(task["n"] == 2 and 0 <= task["accuracy"] <= 1 for task in report["tasks"].values())
    assert report["sampler"] == SamplerConfig().to_dict()  # one default sampler for every model
    assert [p.name for p in out.parent.iterdir()] == ["report.json"]


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "chess"], "tasks ['chess'] are unknown"),
    (["--n", "0"], "argument --n: must be at least 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
])
def test_eval_usage_errors(checkpoints, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--model", checkpoints["llada"], *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not (checkpoint_dir("tiny-llada") / "config.json").is_file(), reason="tiny-llada not shipped yet")
def test_default_model_is_the_shipped_tiny_llada(capsys):
    assert main(["generate", "--prompt", "12+34="]) == 0
    assert capsys.readouterr().out == "46\n"  # the trained model (>= 90% held-out exact match) adds correctly


def test_unknown_model_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "1="])
    assert exit_.value.code == 2
    assert "is not a checkpoint directory" in capsys.readouterr().err
