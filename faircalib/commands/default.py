"""What `faircalib` does with no arguments: FAIR-Calib W4A4 on the shipped tiny-llada, then FP vs W4A4.

Sized to finish in about a minute on a laptop CPU (fewer calibration sequences and epochs than `calibrate`'s
defaults; `faircalib compare` runs the full comparison)."""
from __future__ import annotations

DEFAULT_MODEL = "tiny-llada"


def default_job() -> int:
    import time

    from faircalib.calib.layerwise import CalibOptions
    from faircalib.calib.pipeline import Recipe
    from faircalib.calib.prior import PriorConfig
    from faircalib.compare import CompareSettings, compare

    start = time.perf_counter()
    print(f"faircalib: FAIR-Calib W4A4 on {DEFAULT_MODEL} (run `faircalib --help` for every command)")
    recipe = Recipe("fair", options=CalibOptions(epochs=5), prior=PriorConfig(n_probe=64, batch_size=32))
    settings = CompareSettings(n_calib=64, n_eval=32, n_metric=8)
    results = compare(DEFAULT_MODEL, ["fp", "fair"], recipe, settings)
    fp, q = results["methods"]["fp"], results["methods"]["fair"]
    print(f"\n{'':14}{'accuracy':>10}{'flip rate':>11}{'mean-disagree':>15}{'seconds':>9}")
    for name, m in (("FP", fp), ("W4A4 FAIR", q)):
        print(f"{name:14}{m['accuracy']['all']:>10.3f}{m['flips']['rate']:>11.4f}"
              f"{m['mismatch']['mean_disagree']:>15.4f}{m['seconds']:>9.1f}")
    print(f"\nrecovery {q['recovery']:.3f} of FP accuracy; total {time.perf_counter() - start:.0f} s")
    return 0
