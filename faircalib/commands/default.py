"""What `faircalib` does with no arguments. Placeholder until FAIR-Calib on tiny-llada becomes the default job:
prints the usage and succeeds."""


def default_job() -> int:
    from faircalib.cli import build_parser

    build_parser().print_help()
    return 0
