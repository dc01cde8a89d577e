"""`faircalib compare`: several methods on one model in one run → results.json, results.md, plots.png."""
from __future__ import annotations

from faircalib.commands.calibrate import add_recipe_arguments, recipe_from
from faircalib.commands.options import add_model_arguments, load_tokenizer, output_directory, positive_int

HELP = "compare fp,rtn,quarot,flatquant,fair[,fair-frontier,fair-masked] on one model (table + plots)"


def add_arguments(parser):
    parser.add_argument("--methods", default="fp,rtn,quarot,flatquant,fair",
                        help="comma-separated methods (default fp,rtn,quarot,flatquant,fair)")
    parser.add_argument("--out", type=output_directory, required=True, help="output directory")
    parser.add_argument("--n-eval", type=positive_int, default=64, help="held-out problems per task (default 64)")
    parser.add_argument("--n-metric", type=positive_int, default=16,
                        help="held-out problems per task read along the teacher trajectories (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    add_recipe_arguments(parser)
    add_model_arguments(parser)


def run(args) -> int:
    from faircalib.calib.methods import METHODS
    from faircalib.compare import FP, CompareSettings, compare, markdown_table

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m != FP and m not in METHODS]
    if unknown or not methods:
        args.parser.error(f"--methods: unknown {unknown}; choose from {[FP, *METHODS]}")
    settings = CompareSettings(n_calib=args.n_calib, n_eval=args.n_eval, n_metric=args.n_metric, seed=args.seed)
    load_tokenizer(args)  # the task suite's: a usage error now rather than a traceback inside the comparison
    results = compare(args.model, methods, recipe_from(args, "fair"), settings, out_dir=args.out)
    print(markdown_table(results))
    print(f"\nwrote {args.out / 'results.json'}, {args.out / 'results.md'}, {args.out / 'plots.png'}")
    return 0
