"""`faircalib generate`: answer prompts with a diffusion sampler; `--trace` shows every denoising step."""
from __future__ import annotations

import sys
import time

from faircalib.commands.options import (add_model_arguments, add_sampler_arguments, generator, load_model,
                                        load_tokenizer, positive_int, sampler_config)

HELP = "generate answers to prompts (prints one answer per prompt)"
MASK_GLYPH, EOS_GLYPH = "_", "|"


def add_arguments(parser):
    parser.add_argument("--prompt", action="append", default=[],
                        help="prompt text; repeat for a batch (e.g. --prompt 12+34= --prompt sort:321=)")
    parser.add_argument("--prompts-file", metavar="FILE",
                        help="also the prompts in FILE, one per line (blank lines skipped; - reads standard input), "
                             "after those of --prompt; answers print in the same order")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help="prompts per generation (default: all in one batch); bounds the memory of long prompt "
                             "lists")
    parser.add_argument("--pad-multiple", type=positive_int, metavar="N",
                        help="left-pad each batch's prompts to a multiple of N tokens, so that batches of nearby "
                             "prompt lengths share one shape (one CUDA graph and compilation under --cuda-graph / "
                             "--compile); the padding is masked, so the answers are those without it (on a GPU up to "
                             "rounding: a padded batch takes the masked attention path)")
    parser.add_argument("--trace", action="store_true",
                        help="print the sequence before every step (masked positions as _, eos as |)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay each step's forward from a CUDA graph (faircalib.deploy.GraphedLogits; "
                             "needs --device cuda): removes Python and launch overhead, large for W4A4 models")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile every block first (Inductor fuses the norms, RoPE and SwiGLU around the "
                             "W4A4 ops; with --cuda-graph the fastest path on a GPU); the first step pays the "
                             "compilation")
    parser.add_argument("--keep-unpacked", action="store_true",
                        help="W4A4 checkpoints: hold the weights as int8 codes instead of packed 4-bit ones "
                             "(faircalib.deploy.keep_weights_unpacked(drop_packed=True)): weights 0.5x of bf16 "
                             "instead of 0.25x, no unpack per step; on Hopper GPUs packed weights are unpacked in "
                             "registers and about as fast")
    parser.add_argument("--timing", action="store_true",
                        help="also print (to stderr) the generation's wall time, generated tokens/s and ms per step; "
                             "with --cuda-graph or --compile an untimed generation of each new batch shape runs first, "
                             "since the first one pays the graph capture and compilation")
    add_model_arguments(parser)
    add_sampler_arguments(parser)


def run(args) -> int:
    import torch

    from faircalib.diffusion import generate
    from faircalib.diffusion.prompts import prompt_batch

    if args.cuda_graph and not args.device.startswith("cuda"):
        args.parser.error(f"--cuda-graph needs a CUDA device (got --device {args.device})")
    texts = args.prompt + _prompts_in_file(args)
    if not texts:
        args.parser.error("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE")
    config, tokenizer = sampler_config(args), load_tokenizer(args, hf_fallback=True)
    try:
        prompts = [torch.tensor(tokenizer.encode(p), dtype=torch.long) for p in texts]
    except ValueError as error:
        args.parser.error(str(error))
    model = load_model(args)
    if args.keep_unpacked:
        from faircalib.deploy import keep_weights_unpacked

        if not keep_weights_unpacked(model, drop_packed=True):
            args.parser.error(f"--keep-unpacked needs a W4A4 checkpoint; {args.model} has no W4A4Linear")
    if args.cuda_graph:
        from faircalib.deploy import GraphedLogits

        model = GraphedLogits(model, compile_blocks=args.compile)
    elif args.compile:
        from faircalib.deploy import compile_model_blocks
        from faircalib.models import get_adapter

        compile_model_blocks(get_adapter(model))

    def run_once(batch):
        return generate(model, batch.ids, config, generator=generator(args), record=args.trace,
                        attention_mask=batch.attention_mask)

    size = args.batch_size or len(prompts)
    seconds = tokens = steps = 0
    warmed = set()
    for first in range(0, len(prompts), size):
        batch = prompt_batch(prompts[first:first + size], pad_token_id=tokenizer.pad_token_id,
                             width_multiple=args.pad_multiple or 1)
        shape = (*batch.ids.shape, batch.padded)  # what the graphs and compilation key on
        if args.timing and (args.cuda_graph or args.compile) and shape not in warmed:
            run_once(batch)  # the first run of a batch shape (and padding or not) pays its capture and compilation
            warmed.add(shape)
        started = _clock(args.device)
        out = run_once(batch)
        seconds += _clock(args.device) - started
        tokens, steps = tokens + out.answer.numel(), steps + out.num_steps
        for row, answer in enumerate(out.answer.tolist()):
            if args.trace:
                print_trace(out.trajectory, row, tokenizer)
            print(tokenizer.decode(answer), flush=True)
    if args.timing:
        batches = -(-len(prompts) // size)
        in_batches = "" if batches == 1 else f" in {batches} batches"
        print(f"faircalib generate: {tokens} tokens ({len(prompts)} prompts x {config.gen_length}{in_batches}) in "
              f"{steps} step{'' if steps == 1 else 's'}, {seconds:.3f} s: {tokens / seconds:.1f} tokens/s, "
              f"{1e3 * seconds / steps:.2f} ms per step", file=sys.stderr)
    return 0


def _prompts_in_file(args) -> list[str]:
    """The non-blank lines of --prompts-file (standard input for -), without their line ends; [] without one."""
    if args.prompts_file is None:
        return []
    if args.prompts_file == "-":
        return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    try:
        with open(args.prompts_file, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        args.parser.error(f"--prompts-file {args.prompts_file}: {error}")


def _clock(device: str) -> float:
    """Seconds (perf_counter) once the device has finished its queued work."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def print_trace(trajectory, row: int, tokenizer):
    """One line per step: the state the model saw, then how many positions that step committed."""
    for t in range(trajectory.num_steps):
        state = trajectory.state_before(t)[row]
        committed = int(trajectory.committed_at(t)[row].sum())
        print(f"step {t:>3} {render(state, trajectory, row, tokenizer)}  +{committed}")
    print(f"final    {render(trajectory.tokens[row], trajectory, row, tokenizer)}")


def render(ids, trajectory, row: int, tokenizer) -> str:
    """Token ids -> one printable string: padding dropped, mask and eos as visible glyphs."""
    glyphs = []
    for i, token in enumerate(ids.tolist()):
        if not trajectory.attention_mask[row, i]:
            continue
        if token == trajectory.mask_token_id:
            glyphs.append(MASK_GLYPH)
        elif token == tokenizer.eos_token_id:
            glyphs.append(EOS_GLYPH)
        else:
            glyphs.append(tokenizer.decode([token]))
    return "".join(glyphs)
