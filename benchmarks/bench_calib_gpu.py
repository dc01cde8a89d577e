"""Wall time and peak GPU memory of FAIR-Calib (Stage I probe + Stage II) on a random-weight LLaDA-8B-config model.

    python benchmarks/bench_calib_gpu.py [--out DIR] [--blocks N] [--n-calib 128] [--seq-len 1024] [--epochs 15]

The model (bf16, `build_random("llada", "llada-8b")`) lives on the GPU; Stage II moves one block at a time to
fp32 and trains it with bf16 autocast (FlatQuant's AMP recipe), batch 4. Stage I rolls the FP model out with the
random-commit probe (default budget 512 rollouts, early stop once w̄ changes by < tol per batch; 64-token random
prompts, gen length 256, 64 steps in blocks of 32). The stability-lag reading of the probe (leave-one-out queries)
is off here: on an 8B model it costs more than the probe itself; the tiny models measure it.
`--blocks N` calibrates only the first N blocks and reports the measured per-block time next to the full-depth
figure it implies (labelled as such). Writes `bench_calib.json` to DIR ($OUT or .).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from faircalib.atomic import write_json
from faircalib.calib.layerwise import CalibData, CalibOptions, calibrate_blocks
from faircalib.calib.methods import get_method
from faircalib.calib.prior import PriorConfig, run_probe
from faircalib.config import QuantConfig
from faircalib.diffusion import SamplerConfig
from faircalib.models import build_random, get_adapter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--blocks", type=int, default=None, help="calibrate only the first N blocks")
    parser.add_argument("--n-calib", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-probe", type=int, default=512)
    parser.add_argument("--probe-batch", type=int, default=16)
    parser.add_argument("--config", default="llada-8b", help="a shipped config name or a config.json path")
    parser.add_argument("--device", default="cuda", help="cpu only for a dry run of the script")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(args.device)
    gen = torch.Generator(device).manual_seed(0)
    model = build_random("llada", args.config, dtype=torch.bfloat16, device=device, generator=gen)
    adapter = get_adapter(model)
    vocab, mask_id = model.config.vocab_size, adapter.mask_token_id
    cpu = torch.Generator().manual_seed(0)
    ids = torch.randint(0, mask_id, (args.n_calib, args.seq_len), generator=cpu)
    prompts = [torch.randint(0, mask_id, (64,), generator=cpu) for _ in range(64)]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "vocab": vocab,
              "n_calib": args.n_calib, "seq_len": args.seq_len, "epochs": args.epochs}

    _reset_peak(device)
    sampler = SamplerConfig(sampler="probe", gen_length=256, steps=64, block_length=32)
    config = PriorConfig(n_probe=args.n_probe, batch_size=args.probe_batch, lag_rollouts=0)
    _sync(device)
    start = time.perf_counter()
    prior = run_probe(model, prompts, config, sampler, seq_len=args.seq_len, mask_token_id=mask_id,
                      generator=torch.Generator(device).manual_seed(0))
    _sync(device)
    result["stage1_seconds"] = time.perf_counter() - start
    result["stage1_rollouts"] = prior.num_rollouts
    result["stage1_peak_gib"] = _peak_gib(device)
    print(json.dumps({k: result[k] for k in ("stage1_seconds", "stage1_rollouts", "stage1_peak_gib")}), flush=True)

    n_blocks = len(adapter.blocks) if args.blocks is None else args.blocks
    full_depth = len(adapter.blocks)
    adapter.blocks = adapter.blocks[:n_blocks]
    data = CalibData(ids, None, prior.weights_for(args.seq_len).float())
    options = CalibOptions(epochs=args.epochs, device=args.device, amp=True)
    _reset_peak(device)
    _sync(device)
    start = time.perf_counter()
    logs = calibrate_blocks(adapter, data, get_method("fair"), QuantConfig.w_a(4, 4), options)
    _sync(device)
    stage2 = time.perf_counter() - start
    result.update({"stage2_blocks": n_blocks, "stage2_seconds": stage2, "stage2_seconds_per_block": stage2 / n_blocks,
                   "stage2_peak_gib": _peak_gib(device),
                   "block_losses": [[b["loss_init"], b["loss_final"]] for b in logs]})
    if n_blocks != full_depth:
        result["stage2_seconds_full_depth_implied"] = stage2 / n_blocks * full_depth
    print(json.dumps(result, indent=1))
    write_json(Path(args.out) / "bench_calib.json", result, indent=1)


if __name__ == "__main__":
    main()
