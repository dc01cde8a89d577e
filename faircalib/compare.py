"""Calibrate a model with several methods and measure each against the full-precision teacher, in one run.

For a shipped tiny model (or any model with the task-suite tokenizer): the FP teacher generates the held-out
answers once with the project's default sampler (`SamplerConfig()`, as every reported accuracy uses), recording its trajectories; every method then calibrates a fresh
copy of the model on training problems and is read along those trajectories (frontier flips, post-commit
mismatch, stability lag), and on its own generations (exact-match accuracy, recovery) and masked-token NLL.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from faircalib import atomic, metrics
from faircalib.calib.data import task_sequences
from faircalib.calib.pipeline import Recipe, calibrate
from faircalib.diffusion import SamplerConfig, generate
from faircalib.models import get_adapter, load_model, load_tokenizer
from faircalib.zoo import GEN_LENGTH, load_tasks
from faircalib.zoo.evaluate import evaluate

FP = "fp"


@dataclass(frozen=True)
class CompareSettings:
    n_calib: int = 128  # calibration problems (train split), spread over the tasks
    n_eval: int = 64  # held-out problems per task
    n_metric: int = 16  # held-out problems per task whose teacher trajectories feed the trajectory metrics
    metric_max_states: int | None = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.n_calib, self.n_eval, self.n_metric) < 1:
            raise ValueError(f"CompareSettings: n_calib={self.n_calib}, n_eval={self.n_eval} and "
                             f"n_metric={self.n_metric} must be >= 1")
        if self.metric_max_states is not None and self.metric_max_states < 1:
            raise ValueError(f"CompareSettings: metric_max_states must be None (all) or >= 1, got "
                             f"{self.metric_max_states}")


class TeacherRun:
    """The FP teacher's generations on the held-out prompts, with their trajectories."""

    def __init__(self, model, tokenizer, problems, sampler: SamplerConfig, seed: int, batch_size: int = 64):
        self.trajectories = []
        for start in range(0, len(problems), batch_size):
            prompts = [torch.tensor(tokenizer.encode(p.prompt)) for p in problems[start:start + batch_size]]
            out = generate(model, prompts, sampler, generator=torch.Generator().manual_seed(seed + start),
                           record=True)
            self.trajectories.append(out.trajectory)


def calibration_inputs(tokenizer, settings: CompareSettings):
    """(input_ids, attention_mask, probe prompts) from the train split, the same for every method."""
    from faircalib.zoo import TASKS

    per_task = max(1, settings.n_calib // len(TASKS))
    problems = load_tasks("train", n=per_task, seed=settings.seed + 1)
    ids, mask = task_sequences(tokenizer, problems, GEN_LENGTH)
    prompts = [torch.tensor(tokenizer.encode(p.prompt)) for p in problems]
    return ids, mask, prompts


def measure(model, tokenizer, heldout, teacher: TeacherRun, sampler: SamplerConfig, settings: CompareSettings) -> dict:
    """Accuracy per task, trajectory metrics along the teacher's run, masked-token NLL."""
    adapter = get_adapter(model)
    accuracy = evaluate(model, tokenizer, heldout, sampler, generator=torch.Generator().manual_seed(settings.seed))
    readings = metrics.trajectory_metrics(teacher.trajectories, adapter, max_states=settings.metric_max_states)
    ids, mask = task_sequences(tokenizer, heldout, GEN_LENGTH)
    answer = torch.zeros_like(mask)
    answer[:, -GEN_LENGTH:] = True
    nll = metrics.masked_token_nll(adapter, ids, answer, adapter.mask_token_id, attention_mask=mask,
                                   seed=settings.seed)
    return {"accuracy": accuracy, **readings.to_dict(), "masked_nll": nll.to_dict()}


def compare(model_name: str, methods: list[str], base_recipe: Recipe, settings: CompareSettings,
            out_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Run every method on `model_name` and return (and write) `results.json`, `results.md` and plots."""
    tokenizer = load_tokenizer(model_name)
    fp_model = load_model(model_name)
    sampler = SamplerConfig()
    heldout = load_tasks("heldout", n=settings.n_eval)
    metric_problems = [p for task in dict.fromkeys(p.task for p in heldout)
                       for p in [q for q in heldout if q.task == task][:settings.n_metric]]
    teacher = TeacherRun(fp_model, tokenizer, metric_problems, sampler, settings.seed)
    ids, mask, prompts = calibration_inputs(tokenizer, settings)
    results = {"model": model_name, "sampler": sampler.to_dict(), "settings": settings.__dict__,
               "recipe": base_recipe.to_dict(), "methods": {}}
    for name in methods:
        start = time.perf_counter()
        if name == FP:
            model, times = fp_model, {}
        else:
            model = load_model(model_name)
            result = calibrate(model, ids, mask, recipe=replace(base_recipe, method=name), probe_prompts=prompts,
                               probe_sampler=sampler, progress=progress,
                               out_dir=None if out_dir is None else Path(out_dir) / name)
            times = {"stage1_seconds": result.stage1_seconds, "stage2_seconds": result.stage2_seconds}
        measured = measure(model, tokenizer, heldout, teacher, sampler, settings)
        results["methods"][name] = {**measured, **times, "seconds": time.perf_counter() - start}
    fp_acc = results["methods"].get(FP, {}).get("accuracy", {}).get("all")
    for entry in results["methods"].values():
        entry["recovery"] = metrics.recovery(entry["accuracy"]["all"], fp_acc) if fp_acc is not None else None
    if out_dir is not None:
        write_report(results, Path(out_dir))
    return results


def markdown_table(results: dict) -> str:
    """One row per method: accuracy, recovery, flip rate (all/early/late), post-commit mismatch, NLL, time."""
    head = ("| method | accuracy | recovery | flip rate | flips early | flips late | mean-disagree | never-agree "
            "| masked NLL | time (s) |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    fmt = lambda v, p=3: "–" if v is None else f"{v:.{p}f}"  # noqa: E731
    for name, m in results["methods"].items():
        rows.append(f"| {name} | {fmt(m['accuracy']['all'])} | {fmt(m['recovery'])} | {fmt(m['flips']['rate'], 4)} "
                    f"| {fmt(m['flips']['early'], 4)} | {fmt(m['flips']['late'], 4)} "
                    f"| {fmt(m['mismatch']['mean_disagree'], 4)} | {fmt(m['mismatch']['never_agree'], 4)} "
                    f"| {fmt(m['masked_nll']['nll'])} | {m['seconds']:.1f} |")
    return "\n".join([head, *rows])


def write_report(results: dict, out: Path) -> None:
    """results.json, results.md and plots (flip rate by step, post-commit mismatch, accuracy), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "results.json", results)
    atomic.write_text(out / "results.md", markdown_table(results) + "\n")
    _plot(results, out)


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["methods"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in names:
        per_step = results["methods"][name]["flips"]["per_step"]
        axes[0].plot(range(len(per_step)), [float("nan") if v is None else v for v in per_step], marker=".", label=name)
    axes[0].set(title="frontier flip rate by step", xlabel="denoising step", ylabel="flip rate")
    axes[0].legend()
    mean = [results["methods"][n]["mismatch"]["mean_disagree"] or 0 for n in names]
    never = [results["methods"][n]["mismatch"]["never_agree"] or 0 for n in names]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], mean, 0.4, label="mean-disagree")
    axes[1].bar([i + 0.2 for i in x], never, 0.4, label="never-agree")
    axes[1].set(title="post-commit mismatch", xticks=list(x))
    axes[1].set_xticklabels(names, rotation=30)
    axes[1].legend()
    axes[2].bar(x, [results["methods"][n]["accuracy"]["all"] for n in names])
    axes[2].set(title="exact-match accuracy (held-out)", xticks=list(x), ylim=(0, 1))
    axes[2].set_xticklabels(names, rotation=30)
    fig.tight_layout()
    atomic.write_file(out / "plots.png", lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
