"""`GraphedLogits`: a dLLM's forward pass replayed from CUDA graphs, one per input shape.

A denoising loop calls the model with the same [B, L] input every step, so the whole forward can be captured once
and replayed: one graph launch per step instead of thousands of kernel launches. This matters most for W4A4 models,
whose Python wrappers and Triton launches cost ~200 us of host time per linear: on an H100 (BENCHMARKS.md,
2026-11-22) an eager W4A4 LLaDA-8B-config step over 1024 tokens ran at 0.3-0.45x bf16, host-bound, and at 1.03x
replayed from a graph.

    graphed = GraphedLogits(model)            # a LLaDA/Dream model or its adapter, on CUDA
    out = generate(graphed, prompts, config)  # samplers accept it like a model

Samplers read only the masked positions' logits (`logits_at`): the blocks are replayed from a graph of their own and
the final norm and LM head run on those rows after it, eagerly (their number changes every step).

`compile_blocks=True` also `torch.compile`s every block in place first (`compile_model_blocks`; `compile_kwargs` go
to `torch.compile`): Inductor fuses the norms, RoPE and SwiGLU around the W4A4 ops; on the H100 that took a
4096-token W4A4 step from 1.18x to 1.28x bf16 (each model compiled).

Each new (input shape, mask shape) is captured on first use, once for `logits` and once for `logits_at` (after
warm-up runs on a side stream, which also let Triton autotune), up to `max_graphs` graphs (least recently used
evicted). The captured graph reads static input buffers, so each call copies its inputs in and `logits` returns a
copy of the output (the next replay overwrites the static one; `clone_output=False` returns the static buffer
itself, for callers that consume the logits before the next call). Inputs on the CPU, or when capture is
impossible, run eagerly; `fallback_reason` says why, and a failed capture warns (RuntimeWarning) once. Padded
batches (an attention mask) are captured too: while a graph is captured the models read no mask value on the host
(`models.base.capturing_cuda_graph`). Remote-code LLaDA checks on the host that its mask holds no padding, so with
a mask it runs eagerly.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch


def compile_model_blocks(adapter, **compile_kwargs) -> None:
    """`torch.compile` each block of `adapter` in place (`compile_kwargs` go to it): Inductor fuses the norms, RoPE
    and SwiGLU around the W4A4 ops; the compiled code is shared by the blocks (nn modules are inlined)."""
    for block in adapter.blocks:
        block.compile(**compile_kwargs)


class GraphedLogits:
    """Adapter-like wrapper (`logits`, `mask_token_id`, `model`): `logits(input_ids, attention_mask)` replays a
    CUDA graph of the wrapped model's `logits` for that input shape (module doc)."""

    def __init__(self, model, max_graphs: int = 4, warmup: int = 2, clone_output: bool = True,
                 compile_blocks: bool = False, compile_kwargs: dict | None = None):
        from faircalib.models import get_adapter

        if max_graphs < 1 or warmup < 1:
            raise ValueError(f"faircalib.deploy.GraphedLogits: max_graphs and warmup must be >= 1, got "
                             f"{max_graphs}, {warmup}")
        self.adapter = model if hasattr(model, "logits") and hasattr(model, "mask_token_id") else get_adapter(model)
        if compile_blocks:
            compile_model_blocks(self.adapter, **(compile_kwargs or {}))
        self.model = getattr(self.adapter, "model", None)
        self.mask_token_id = self.adapter.mask_token_id
        self.max_graphs, self.warmup, self.clone_output = max_graphs, warmup, clone_output
        self.fallback_reason: str | None = None
        self._graphs: OrderedDict = OrderedDict()
        self._pool = None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(input_ids, attention_mask)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out, static = self._replay(self.adapter.logits, input_ids, attention_mask)
        return out.clone() if static and self.clone_output else out

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  rows: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """`logits(input_ids, attention_mask)[rows]` as the adapter's `logits_at` computes it: the blocks replayed
        from a graph of their own, the final norm and LM head then run on the rows' hidden states (their number
        changes every step, so they stay outside the graph). The rows are found first (`Adapter.select_rows`; it
        waits for the GPU unless count = rows.sum() is given), so that the replay, the head and the caller's work
        after it queue without a wait."""
        selected = self.adapter.select_rows(rows, input_ids.shape, count)
        return self.adapter.head_at(self._replay(self.adapter.hidden, input_ids, attention_mask)[0], selected)

    def _replay(self, forward, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """(output, static): forward(input_ids, attention_mask) (the adapter's `logits` or `hidden`) replayed from
        its graph for these input shapes (static: the graph's output buffer, overwritten by the next replay), or run
        eagerly."""
        if input_ids.device.type != "cuda" or self.fallback_reason is not None:
            return forward(input_ids, attention_mask), False
        key = (forward.__name__, tuple(input_ids.shape), input_ids.dtype, input_ids.device,
               None if attention_mask is None else (tuple(attention_mask.shape), attention_mask.dtype))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(forward, input_ids, attention_mask)
            if entry is None:
                return forward(input_ids, attention_mask), False
            self._graphs[key] = entry
            if len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        graph, static_ids, static_mask, static_out = entry
        static_ids.copy_(input_ids)
        if static_mask is not None:
            static_mask.copy_(attention_mask)
        graph.replay()
        return static_out, True

    def _capture(self, forward, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        static_ids = input_ids.clone()
        static_mask = None if attention_mask is None else attention_mask.clone()
        try:
            side = torch.cuda.Stream(device=input_ids.device)
            side.wait_stream(torch.cuda.current_stream(input_ids.device))
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(self.warmup):
                    forward(static_ids, static_mask)
            torch.cuda.current_stream(input_ids.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, pool=self._pool):
                static_out = forward(static_ids, static_mask)
        except RuntimeError as error:  # e.g. an op that synchronises with the host cannot be captured
            self.fallback_reason = f"CUDA graph capture failed, running eagerly: {str(error).splitlines()[0]}"
            # Eager W4A4 steps cost ~200 us of launches per linear (0.5x bf16 at 1024 tokens): say so once
            warnings.warn(f"faircalib.deploy.GraphedLogits: {self.fallback_reason}", RuntimeWarning, stacklevel=4)
            return None
        return graph, static_ids, static_mask, static_out
