"""Train a tiny LLaDA- or Dream-style dLLM on the task suite with the masked-diffusion objective.

    python -m faircalib.zoo.train --family llada --out DIR [--steps N --device cuda --seed 0]

Objective (LLaDA SFT): each example is `prompt + answer + eos padding up to gen_length`. Per sequence draw
t ~ U(0, 1), mask every answer-region token (eos padding included) with probability p = (1 - eps) t + eps, never a
prompt token, and take the cross-entropy on the masked tokens weighted 1/p, summed and divided by the number of
answer-region tokens in the batch. Dream's one-position logit shift is handled by the adapter, so one loop trains
both families. AdamW with linear warm-up then cosine decay; bf16 autocast on CUDA. At the end: held-out
exact match with the default sampler, then the model (fp16 safetensors), tokenizer.json and train_log.json.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers

from faircalib.atomic import write_json
from faircalib.diffusion import SamplerConfig
from faircalib.models import build_random, get_adapter, save_model
from faircalib.zoo.evaluate import evaluate
from faircalib.zoo.rtn import rtn_w4a4
from faircalib.zoo.tasks import GEN_LENGTH, TASKS, Problem, load_tasks
from faircalib.zoo.tokenizer import CharTokenizer

# Shapes of the shipped models (config keys as in the published configs); ~5M parameters, ~10 MB in fp16.
# RoPE theta 10^4 instead of the published 5*10^5 / 10^6: over 40-token sequences a large theta leaves most
# rotary frequencies nearly still. The context is capped at 64 tokens so over-long prompts fail clearly.
TINY_ARCH = {
    "llada": {
        "d_model": 256, "n_layers": 6, "n_heads": 8, "n_kv_heads": 8, "mlp_hidden_size": 768,
        "rope_theta": 10_000.0, "max_sequence_length": 64,
    },
    "dream": {
        "hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
        "intermediate_size": 768, "rope_theta": 10_000.0, "max_position_embeddings": 64,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (recorded in train_log.json)."""

    family: str = "llada"
    arch: dict = field(default_factory=dict)  # overrides of TINY_ARCH[family]
    steps: int = 12_000
    batch_size: int = 256
    lr: float = 1.5e-3
    weight_decay: float = 0.1
    warmup_steps: int = 200
    train_per_task: int = 100_000
    heldout_per_task: int | None = None  # None: the task suite's default held-out size
    gen_length: int = GEN_LENGTH
    eps: float = 1e-3
    seed: int = 0
    log_every: int = 200
    max_seconds: float | None = None  # safety stop for leased GPU time; the log says when it cut a run short

    def __post_init__(self):
        if self.family not in TINY_ARCH:
            raise ValueError(f"zoo.train: family {self.family!r} is unknown; use one of {list(TINY_ARCH)}")
        if self.steps < 1 or self.batch_size < 1 or not 0 < self.eps < 1:
            raise ValueError(
                f"zoo.train: steps={self.steps}, batch_size={self.batch_size} must be >= 1 and eps={self.eps} in (0, 1)"
            )


def encode_examples(tokenizer: CharTokenizer, problems: list[Problem], gen_length: int) -> dict[str, torch.Tensor]:
    """problems -> right-padded tensors, each [N, max_prompt + gen_length]: `input_ids` int64 (prompt, answer,
    eos up to gen_length, then pad), `attention_mask` bool (False on pad), `answer_mask` bool (answer region)."""
    prompts = [tokenizer.encode(p.prompt) for p in problems]
    answers = [tokenizer.encode(p.answer) for p in problems]
    too_long = [p.answer for p, a in zip(problems, answers) if len(a) > gen_length]
    if too_long:
        raise ValueError(f"zoo.train: answers {too_long[:3]} exceed gen_length={gen_length}; raise gen_length")
    width = max(map(len, prompts)) + gen_length
    input_ids = torch.full((len(problems), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(problems), width, dtype=torch.bool)
    answer_mask = torch.zeros(len(problems), width, dtype=torch.bool)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        region = answer + [tokenizer.eos_token_id] * (gen_length - len(answer))
        end = len(prompt) + gen_length
        input_ids[row, :end] = torch.tensor(prompt + region)
        attention_mask[row, :end] = True
        answer_mask[row, len(prompt) : end] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "answer_mask": answer_mask}


def masked_diffusion_loss(model, batch: dict[str, torch.Tensor], mask_token_id: int, eps: float, generator):
    """batch tensors [B, L] (see `encode_examples`) on the model's device -> scalar loss (fp32).

    `generator` must live on that device: it draws t and the masks, so a run is reproducible from its seed."""
    input_ids, answer_mask = batch["input_ids"], batch["answer_mask"]
    device = input_ids.device
    t = torch.rand(input_ids.shape[0], 1, device=device, generator=generator)
    p_mask = ((1 - eps) * t + eps).expand_as(input_ids)
    masked = (torch.rand(input_ids.shape, device=device, generator=generator) < p_mask) & answer_mask
    noisy = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    logits = get_adapter(model).logits(noisy, batch["attention_mask"])
    ce = F.cross_entropy(logits[masked].float(), input_ids[masked], reduction="none")
    return (ce / p_mask[masked]).sum() / answer_mask.sum()


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier: linear 0 -> 1 over `warmup` steps, then cosine 1 -> 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train(model, tokenizer: CharTokenizer, config: TrainConfig, device: str) -> list[dict]:
    """Trains `model` in place on `config.train_per_task` problems per task (bf16 autocast on CUDA).

    Returns the loss log `[{"step", "loss", "lr"}]` (loss averaged over the steps since the previous entry),
    ending with `{"step", "stopped_early": True}` when `max_seconds` cut the run short."""
    data = encode_examples(tokenizer, load_tasks("train", config.train_per_task, seed=config.seed), config.gen_length)
    data = {k: v.to(device) for k, v in data.items()}
    count = data["input_ids"].shape[0]
    model.to(device).train()
    on_cuda = torch.device(device).type == "cuda"
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95), fused=on_cuda
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, config.warmup_steps, config.steps)
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)
    log, running = [], torch.zeros((), device=device)
    start = time.time()
    for step in range(config.steps):
        rows = torch.randint(count, (config.batch_size,), device=device, generator=generator)
        batch = {k: v[rows] for k, v in data.items()}
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=on_cuda):
            loss = masked_diffusion_loss(model, batch, tokenizer.mask_token_id, config.eps, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        running += loss.detach()
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            span = (step % config.log_every) + 1
            entry = {"step": step + 1, "loss": running.item() / span, "lr": schedule.get_last_lr()[0]}
            log.append(entry)
            print(
                f"[{config.family}] step {entry['step']:>6}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
            running.zero_()
        if config.max_seconds is not None and time.time() - start > config.max_seconds:
            log.append({"step": step + 1, "stopped_early": True})
            print(f"[{config.family}] stopped after {step + 1} steps: max_seconds={config.max_seconds}", flush=True)
            break
    model.eval()
    return log


def build_model(tokenizer: CharTokenizer, config: TrainConfig):
    """A freshly initialised tiny model of `config.family` for this tokenizer, drawn on the CPU from
    `config.seed` (so the start is the same whatever device trains it)."""
    model_config = {
        **TINY_ARCH[config.family],
        **config.arch,
        "vocab_size": tokenizer.vocab_size,
        "mask_token_id": tokenizer.mask_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return build_random(config.family, model_config, generator=torch.Generator().manual_seed(config.seed))


def run(config: TrainConfig, out: Path, device: str, argv: list[str]) -> dict:
    """Build, train, evaluate (FP and naive W4A4 RTN), save to `out`; returns the train log written there."""
    out.mkdir(parents=True, exist_ok=True)  # fail on an unwritable `out` before training, not after
    tokenizer = CharTokenizer()
    model = build_model(tokenizer, config)
    start = time.time()
    losses = train(model, tokenizer, config, device)
    train_seconds = time.time() - start
    heldout = load_tasks("heldout", config.heldout_per_task)
    generator = torch.Generator(device=device)
    accuracy = evaluate(model, tokenizer, heldout, generator=generator.manual_seed(0))
    accuracy_rtn = evaluate(rtn_w4a4(model), tokenizer, heldout, generator=generator.manual_seed(0))
    save_model(model, out, dtype=torch.float16)
    tokenizer.save(out)
    record = {
        "command": shlex.join([Path(sys.executable).name, "-m", "faircalib.zoo.train", *argv]),
        "config": asdict(config),
        "arch": {**TINY_ARCH[config.family], **config.arch},
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": {"train_problems": config.train_per_task * len(TASKS), "heldout_problems": len(heldout)},
        "device": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": round(train_seconds, 1),
        "losses": losses,
        "sampler": SamplerConfig().to_dict(),
        "heldout_accuracy": accuracy,
        "heldout_accuracy_w4a4_rtn": accuracy_rtn,
    }
    write_json(out / "train_log.json", record, indent=1)
    return record


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m faircalib.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=list(TINY_ARCH), required=True)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--train-per-task", type=int, default=TrainConfig.train_per_task)
    parser.add_argument("--heldout-per-task", type=int, default=None)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--max-seconds", type=float, default=None, help="stop training early after this long")
    parser.add_argument("--log-every", type=int, default=TrainConfig.log_every)
    parser.add_argument("--arch", type=json.loads, default={}, help='JSON overrides, e.g. \'{"n_layers": 2}\'')
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    config = TrainConfig(
        family=args.family,
        arch=args.arch,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        train_per_task=args.train_per_task,
        heldout_per_task=args.heldout_per_task,
        seed=args.seed,
        log_every=args.log_every,
        max_seconds=args.max_seconds,
    )
    record = run(config, args.out, args.device, argv)
    print(json.dumps({k: record[k] for k in ("train_seconds", "heldout_accuracy", "heldout_accuracy_w4a4_rtn")}))
    return record


if __name__ == "__main__":
    main()
