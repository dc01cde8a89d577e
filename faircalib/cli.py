"""The `faircalib` command: a table of subcommands, each implemented by one module under `faircalib/commands/`.

A command module provides `HELP` (one line), `add_arguments(parser)` and `run(args) -> int` (the exit status).
Adding a command is one line in `COMMANDS`. Modules are imported when the parser is built, and keep their heavy
imports (models, samplers) inside `run`, so `faircalib --help` stays quick. With no arguments at all, `faircalib`
runs `faircalib.commands.default.default_job()`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "generate": "faircalib.commands.generate",
    "eval": "faircalib.commands.evaluate",
    "calibrate": "faircalib.commands.calibrate",
    "compare": "faircalib.commands.compare",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faircalib",
        description="Frontier-aware W4A4 calibration (FAIR-Calib) for diffusion LLMs. "
        "Without arguments: the default job.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, parser=sub)  # commands report usage errors via args.parser
    return parser


# The status of a process that a closed pipe stopped (128 + SIGPIPE), as the shell reports for `seq 9 | head -1`.
BROKEN_PIPE_STATUS = 141


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status. A reader that closes the output early
    (`faircalib generate ... | head -3`) stops the command quietly, as it stops other command-line tools."""
    try:
        return _dispatch(argv)
    except BrokenPipeError:
        # Output still buffered would raise again when Python flushes stdout at exit: send it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS


def _dispatch(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        from faircalib.commands.default import default_job

        return default_job()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
