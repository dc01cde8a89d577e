"""Implementations of the `faircalib` subcommands, one module per command (see `faircalib/cli.py`)."""
