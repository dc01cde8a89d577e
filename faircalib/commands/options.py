"""Options shared by commands: which model to load, and the sampler settings that become a `SamplerConfig`."""
from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from faircalib.diffusion.config import SAMPLERS, SamplerConfig

DTYPES = ("float32", "float16", "bfloat16")


def error_reason(error: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run long), or its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def device(text: str) -> str:
    """--device: a torch device this machine has, checked before any model loads."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device ({error})") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device here (torch {torch.__version__}, "
                                             f"torch.cuda.is_available() is False); use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s), cuda:0 to "
                                             f"cuda:{count - 1}")
    if dev.type not in ("cpu", "cuda"):
        try:  # other backends (mps, xpu, ...): an empty tensor there, or the backend's own reason why not
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as error:
            reason = error_reason(error).split(". ")[0][:200]
            raise argparse.ArgumentTypeError(f"{text!r} is not usable here ({reason}); use --device cpu") from None
    return text


def positive_int(text: str) -> int:
    """A count option (sequences, tokens, problems): an int of at least 1, checked while parsing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def output_directory(text: str) -> Path:
    """--out of commands that write a directory: anything but an existing file (created later, as needed)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a directory (new or existing)")
    return path


def existing_file(text: str) -> Path:
    """An input file option: it must exist (checked while parsing, before any model loads)."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    return path


def output_file(text: str) -> Path:
    """--out of commands that write one file: anything but an existing directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file path, e.g. {path / 'report.json'}")
    return path


def add_model_arguments(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="tiny-llada",
                       help="tiny-llada, tiny-dream or a checkpoint directory (default: tiny-llada)")
    group.add_argument("--device", default="cpu", type=device, help="torch device (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=DTYPES, help="weight dtype (default: float32)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="load other dLLMs through their published modeling code")


def add_sampler_arguments(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("sampler (defaults: faircalib.diffusion.SamplerConfig)")
    group.add_argument("--sampler", choices=SAMPLERS,
                       help="default llada for every model, as the zoo's reported accuracies use")
    group.add_argument("--gen-length", type=int, help="answer tokens (default 16)")
    group.add_argument("--steps", type=int, help="denoising steps (default 16)")
    group.add_argument("--block-length", type=int, help="block size of llada/threshold/probe (default: gen length)")
    group.add_argument("--remasking", help="commit order: low_confidence|random (llada), "
                       "origin|maskgit_plus|topk_margin|entropy (dream)")
    group.add_argument("--temperature", type=float, help="0 = greedy (default)")
    group.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default 0 = off)")
    group.add_argument("--threshold", type=float, help="confidence threshold of the threshold sampler (0.9)")
    group.add_argument("--top-p", type=float, help="dream: nucleus sampling")
    group.add_argument("--top-k", type=int, help="dream: top-k sampling")
    group.add_argument("--alg-temp", type=float, help="dream: randomised commit order temperature")
    group.add_argument("--eps", type=float, help="dream: final time (default 1e-3)")
    group.add_argument("--seed", type=int, default=0, help="seed of all sampling randomness (default 0)")


def load_tokenizer(args, hf_fallback: bool = False):
    """The checkpoint's task-suite tokenizer (cheap: read first, so bad prompts fail before the model loads);
    `hf_fallback`: else the Hugging Face tokenizer that real LLaDA/Dream checkpoints ship (`HFTokenizer`)."""
    from faircalib.models import load_tokenizer as load

    try:
        return load(args.model)
    except (FileNotFoundError, ValueError) as error:
        directory = Path(args.model)
        # A tokenizer.json that is not the task suite's, or a tokenizer_config.json: a Hugging Face tokenizer
        if hf_fallback and directory.is_dir() and (isinstance(error, ValueError)
                                                   or (directory / "tokenizer_config.json").is_file()):
            from faircalib.models.hf_tokenizer import HFTokenizer

            try:
                return HFTokenizer.load(directory, trust_remote_code=args.trust_remote_code)
            except (OSError, ValueError) as hf_error:
                args.parser.error(f"{directory}: its Hugging Face tokenizer did not load: {hf_error}")
        args.parser.error(str(error))


def load_model(args):
    import torch

    from faircalib.models import load_model as load

    return load(args.model, dtype=getattr(torch, args.dtype), device=args.device,
                trust_remote_code=args.trust_remote_code)


def sampler_config(args):
    """The SamplerConfig the options ask for (one option per field; options not given keep the config's
    defaults); invalid settings end in a usage error naming the problem."""
    settings = {f.name: getattr(args, f.name) for f in fields(SamplerConfig) if getattr(args, f.name) is not None}
    if "gen_length" in settings and "steps" not in settings:
        settings["steps"] = settings["gen_length"]  # one token per step unless told otherwise
    try:
        return SamplerConfig(**settings)
    except ValueError as error:
        args.parser.error(str(error))


def generator(args):
    import torch

    return torch.Generator(args.device).manual_seed(args.seed)
