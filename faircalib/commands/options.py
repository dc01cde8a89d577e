"""Options shared by commands: which model to load, and the sampler settings that become a `SamplerConfig`."""
from __future__ import annotations

import argparse

DTYPES = ("float32", "float16", "bfloat16")
SAMPLERS = ("llada", "dream", "threshold", "probe")  # = faircalib.diffusion.SAMPLERS, kept import-free for --help
# option name -> SamplerConfig field; None values are left to SamplerConfig's defaults
SAMPLER_FIELDS = ("sampler", "gen_length", "steps", "block_length", "remasking", "temperature", "cfg_scale",
                  "threshold", "top_p", "top_k", "alg_temp", "eps")


def add_model_arguments(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="tiny-llada",
                       help="tiny-llada, tiny-dream or a checkpoint directory (default: tiny-llada)")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument("--dtype", default="float32", choices=DTYPES, help="weight dtype (default: float32)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="load other dLLMs through their published modeling code")


def add_sampler_arguments(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("sampler (defaults: faircalib.diffusion.SamplerConfig)")
    group.add_argument("--sampler", choices=SAMPLERS,
                       help="default: dream for Dream-family models (shifted logits), llada otherwise")
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


def load_model_and_tokenizer(args):
    import torch

    from faircalib.models import load_model, load_tokenizer

    model = load_model(args.model, dtype=getattr(torch, args.dtype), device=args.device,
                       trust_remote_code=args.trust_remote_code)
    return model, load_tokenizer(args.model)


def sampler_config(args, model):
    """The SamplerConfig the options ask for; invalid settings end in a usage error naming the problem."""
    from faircalib.diffusion import SamplerConfig
    from faircalib.models import get_adapter

    settings = {name: getattr(args, name) for name in SAMPLER_FIELDS if getattr(args, name) is not None}
    settings.setdefault("sampler", "dream" if get_adapter(model).shift_logits else "llada")
    if "gen_length" in settings and "steps" not in settings:
        settings["steps"] = settings["gen_length"]  # one token per step unless told otherwise
    try:
        return SamplerConfig(**settings)
    except ValueError as error:
        args.parser.error(str(error))


def generator(args):
    import torch

    return torch.Generator(args.device).manual_seed(args.seed)
