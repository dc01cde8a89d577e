"""PNG figure of a Stage I position prior: weight per position, and the CCDF of the teacher's stability lag."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is ever needed (CI, servers)
import matplotlib.pyplot as plt  # noqa: E402

from faircalib import atomic  # noqa: E402
from faircalib.metrics import lag_ccdf  # noqa: E402


def plot_prior(prior, path) -> Path:
    """Writes `path` (PNG) atomically for a `PositionPrior`; returns the path."""
    path = Path(path)
    figure, (weights_axis, lag_axis) = plt.subplots(1, 2, figsize=(11, 3.6))
    weights = prior.weights
    weights_axis.plot(range(len(weights)), weights.tolist(), lw=1.2)
    weights_axis.axhline(1.0, color="gray", ls=":", lw=0.8)
    weights_axis.set(xlabel="position in the calibration sequence", ylabel="weight w̄ (mean 1)",
                     title=f"position prior ({prior.config.terms}, {prior.num_rollouts} rollouts)")
    ccdf = lag_ccdf(prior.stability_lags)
    if prior.stability_lags:
        lag_axis.step(ccdf["lag"], ccdf["ccdf"], where="post")
        if any(p > 0 for p in ccdf["ccdf"]):  # a log axis needs a positive value; heavy tails show only on one
            lag_axis.set_yscale("log")
    else:
        lag_axis.text(0.5, 0.5, "no stability lags measured", ha="center", va="center", transform=lag_axis.transAxes)
    unsettled = sum(lag is None for lag in prior.stability_lags)
    lag_axis.set(xlabel="stability lag (steps)", ylabel="P(lag > x)",
                 title=f"teacher stability lag ({len(prior.stability_lags)} positions, {unsettled} never settle)")
    figure.tight_layout()
    atomic.write_file(path, lambda tmp: figure.savefig(tmp, dpi=110))
    plt.close(figure)
    return path
