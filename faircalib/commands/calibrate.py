"""`faircalib calibrate`: quantize a model with one method (FAIR-Calib by default) and write the result."""
from __future__ import annotations

from faircalib.commands.options import add_model_arguments, error_reason, existing_file, output_directory, positive_int

HELP = "calibrate a model to WxAy with fair|flatquant|quarot|rtn (Stage I prior + Stage II block-wise)"
KEEP_ACTIVATIONS = 16  # --abits value that leaves activations unquantized


def add_recipe_arguments(parser) -> None:
    """Options shared by `calibrate` and `compare`: the quantization scheme and Stage I/II settings."""
    g = parser.add_argument_group("quantization")
    g.add_argument("--wbits", type=int, default=4, help="weight bits (default 4)")
    g.add_argument("--abits", type=int, default=4,
                   help=f"activation bits, 2..8 or {KEEP_ACTIVATIONS} = keep activations (default 4)")
    g.add_argument("--group-size", type=int, default=-1, help="weight group size along K (-1 = per channel)")
    g.add_argument("--gptq", action="store_true", help="GPTQ instead of round-to-nearest for the weights")
    g = parser.add_argument_group("Stage II (block-wise calibration)")
    g.add_argument("--epochs", type=int, default=15, help="epochs per block (default 15, FlatQuant's)")
    g.add_argument("--lr", type=float, default=5e-3, help="transform learning rate (clip lr is 10x)")
    g.add_argument("--batch-size", type=int,
                   help="sequences per step (default: 4, or ~256 tokens' worth for short sequences)")
    g.add_argument("--fp-inputs", action="store_true",
                   help="feed each block full-precision inputs (FlatQuant's original) instead of the quantized stream")
    g.add_argument("--n-calib", type=positive_int, default=128, help="calibration sequences (default 128)")
    g = parser.add_argument_group("Stage I (teacher probe)")
    g.add_argument("--n-probe", type=int, default=512, help="probe rollouts (default 512; stops early on saturation)")
    g.add_argument("--window", type=int, default=256, help="trailing window K of the prior (default 256)")
    g.add_argument("--confidence", default="prob", choices=("prob", "neg_entropy", "margin"),
                   help="teacher reliability of the masked-stage term (default prob)")


def recipe_from(args, method: str):
    from faircalib.calib.layerwise import CalibOptions
    from faircalib.calib.pipeline import Recipe
    from faircalib.calib.prior import PriorConfig
    from faircalib.config import QuantConfig

    if args.abits != KEEP_ACTIVATIONS and not 2 <= args.abits <= 8:
        args.parser.error(f"--abits must be 2..8, or {KEEP_ACTIVATIONS} to keep activations; got {args.abits}")
    try:
        qconfig = QuantConfig.w_a(args.wbits, None if args.abits == KEEP_ACTIVATIONS else args.abits, args.group_size)
        options = CalibOptions(epochs=args.epochs, lr=args.lr, clip_lr=10 * args.lr, batch_size=args.batch_size,
                               inputs="fp" if args.fp_inputs else "quantized", gptq=args.gptq, seed=args.seed,
                               device=args.device)
        prior = PriorConfig(n_probe=args.n_probe, window=args.window, confidence=args.confidence, seed=args.seed)
        return Recipe(method, qconfig, options, prior)
    except ValueError as error:
        args.parser.error(str(error))


def add_arguments(parser):
    parser.add_argument("--method", default="fair",
                        help="fair | flatquant | quarot | rtn | fair-frontier | fair-masked (default fair)")
    parser.add_argument("--out", type=output_directory, required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--export", choices=("faircalib", "compressed-tensors"),
                        help="also write a packed W4A4 checkpoint to OUT/export-FORMAT (deployment format)")
    parser.add_argument("--prior", type=existing_file, help="reuse a saved Stage I prior (prior.json) instead of probing")
    parser.add_argument("--calib-text", type=existing_file,
                        help="models without the task-suite tokenizer (real LLaDA/Dream checkpoints): a UTF-8 text "
                             "file, tokenized with the checkpoint's own tokenizer; random windows of --seq-len")
    parser.add_argument("--seq-len", type=positive_int, default=1024,
                        help="calibration window with --calib-text (1024)")
    add_recipe_arguments(parser)
    add_model_arguments(parser)


# Stage I on real checkpoints: 64-token prompts cut from the calibration text, 256 answer tokens in 64 steps.
TEXT_PROMPT_TOKENS = 64
TEXT_PROBE = dict(sampler="probe", gen_length=256, steps=64, block_length=32)


def text_inputs(args):
    """(input_ids, None, probe prompts, probe sampler) for a real checkpoint from --calib-text."""
    import torch

    from faircalib.calib.data import text_sequences
    from faircalib.diffusion import SamplerConfig
    from faircalib.models.hf_tokenizer import HFTokenizer
    from faircalib.models.loading import resolve_checkpoint

    try:
        tokenizer = HFTokenizer.load(resolve_checkpoint(args.model), trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:  # transformers' ways of failing
        args.parser.error(f"--calib-text is tokenized with the checkpoint's Hugging Face tokenizer, and {args.model} "
                          f"has none that loads ({error_reason(error)}); the shipped tiny models calibrate on the "
                          f"task suite (leave out --calib-text)")
    tokens = torch.tensor(tokenizer.encode(args.calib_text.read_text(encoding="utf-8")), dtype=torch.long)
    try:
        ids = text_sequences(tokens, args.seq_len, args.n_calib, torch.Generator().manual_seed(args.seed))
    except ValueError as error:  # a text shorter than one window
        args.parser.error(f"--calib-text {args.calib_text}: {error}; give a longer text or a smaller --seq-len")
    prompts = [row[:TEXT_PROMPT_TOKENS] for row in ids]
    return ids, None, prompts, SamplerConfig(**TEXT_PROBE)


def task_inputs(args):
    """(input_ids, attention_mask, probe prompts, probe sampler) from the task suite's training split."""
    from faircalib.compare import CompareSettings, calibration_inputs
    from faircalib.diffusion import SamplerConfig
    from faircalib.models import load_tokenizer
    from faircalib.models.loading import resolve_checkpoint

    try:
        resolve_checkpoint(args.model)
    except FileNotFoundError as error:
        args.parser.error(str(error))
    try:
        tokenizer = load_tokenizer(args.model)
    except (FileNotFoundError, ValueError) as error:  # no tokenizer.json, or a Hugging Face one
        args.parser.error(f"{error}; for a checkpoint without the task-suite tokenizer pass --calib-text FILE")
    return (*calibration_inputs(tokenizer, CompareSettings(n_calib=args.n_calib, seed=args.seed)), SamplerConfig())


def run(args) -> int:
    import json
    import sys

    from faircalib.calib.pipeline import CalibrationInputError, calibrate
    from faircalib.calib.prior import PositionPrior
    from faircalib.models import load_model

    recipe = recipe_from(args, args.method)
    if args.export is not None:
        from faircalib.calib.methods import get_method
        from faircalib.deploy.export import check_exportable

        try:
            check_exportable(get_method(args.method), recipe.qconfig, args.export)
        except ValueError as error:
            args.parser.error(f"--export {args.export}: {error}")
    try:
        prior = PositionPrior.load(args.prior) if args.prior is not None else None
    except (ValueError, KeyError, TypeError) as error:  # a JSON decoding error is a ValueError
        args.parser.error(f"--prior {args.prior}: not a prior written by PositionPrior.save ({type(error).__name__}: "
                          f"{error})")
    ids, mask, prompts, probe = text_inputs(args) if args.calib_text is not None else task_inputs(args)
    model = load_model(args.model, device="cpu", trust_remote_code=args.trust_remote_code)
    try:
        result = calibrate(model, ids, mask, recipe=recipe, probe_prompts=prompts, probe_sampler=probe, prior=prior,
                           out_dir=args.out, resume=args.resume)
    except CalibrationInputError as error:  # raised before any work: e.g. a --group-size no linear's width takes
        args.parser.error(str(error))
    exported = None
    if args.export is not None:
        from faircalib.deploy.export import copy_tokenizer_files, export_quantized
        from faircalib.models.loading import resolve_checkpoint

        try:
            exported = str(export_quantized(model, args.out / f"export-{args.export}", args.export,
                                            fingerprint=result.fingerprint))
        except ValueError as error:  # e.g. compressed-tensors cannot express online transforms
            print(f"faircalib calibrate: --export {args.export} failed: {error}", file=sys.stderr)
            return 2
        copy_tokenizer_files(resolve_checkpoint(args.model), exported)  # the export generates on its own
    print(json.dumps({"out": str(args.out), "method": args.method, "fingerprint": result.fingerprint,
                      "export": exported,
                      "stage1_seconds": round(result.stage1_seconds, 2),
                      "stage2_seconds": round(result.stage2_seconds, 2),
                      "block_losses": [[round(b["loss_init"], 5), round(b["loss_final"], 5)] for b in result.logs]},
                     indent=2))
    return 0
