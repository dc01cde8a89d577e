"""Tiny calibrated models for the deployment tests: random tiny LLaDA/Dream models whose block linears are
wrapped as QuantLinears (RTN, QuaRot-style Hadamard, or FlatQuant-style Kronecker with non-trivial factors)."""
import copy

import pytest
import torch
from torch import nn

from faircalib.calib.layerwise import wrap_block
from faircalib.calib.methods import get_method
from faircalib.calib.quant_linear import QuantLinear
from faircalib.calib.transforms import KroneckerTransform, random_orthogonal
from faircalib.config import QuantConfig, QuantSpec
from faircalib.deploy.w4a4_linear import W4A4Linear
from faircalib.kernels import registry
from faircalib.models import build_random, get_adapter, load_model

TINY = {
    "llada": {"model_type": "llada", "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2,
              "mlp_hidden_size": 96, "vocab_size": 50, "embedding_size": 64, "rope_theta": 10000.0,
              "mask_token_id": 49, "eos_token_id": 48, "pad_token_id": 48, "max_sequence_length": 128},
    "dream": {"model_type": "Dream", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 50, "rope_theta": 10000.0,
              "mask_token_id": 49, "pad_token_id": 48, "eos_token_id": 48, "bos_token_id": 48},
}



def _randomise_kronecker(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Give every (identity-initialised) Kronecker transform random orthogonal factors and channel scales."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KroneckerTransform):
                module.left.copy_(random_orthogonal(module.left.shape[0], gen))
                module.right.copy_(random_orthogonal(module.right.shape[0], gen))
                module.channel_scale.mul_(torch.rand(module.d, generator=gen) + 0.5)


def quantized_tiny(family: str, method: str = "flatquant", seed: int = 0, shipped: bool = False,
                   qconfig: QuantConfig = QuantConfig.w_a(4, 4)) -> torch.nn.Module:
    """A tiny random model of `family` (`shipped`: the trained tiny-llada / tiny-dream) with every block linear a
    folded QuantLinear of `method` and `qconfig` (default W4A4)."""
    gen = torch.Generator().manual_seed(seed)
    model = (load_model(f"tiny-{family}") if shipped
             else build_random(family, TINY[family], generator=torch.Generator().manual_seed(seed)))
    adapter = get_adapter(model)
    for block in adapter.blocks:
        wrap_block(adapter, block, get_method(method), qconfig, gen)
    _randomise_kronecker(model, gen)
    for module in model.modules():
        if hasattr(module, "fold") and hasattr(module, "input_transform"):
            module.fold()
    # Frozen, as `calibrate` leaves a model: torch's matmul sums operands that require grad in another order.
    return model.eval().requires_grad_(False)


@pytest.fixture(params=["llada", "dream"])
def family(request):
    return request.param


def count_kernel_calls(monkeypatch, names=("quantize_act_packed", "quantize_swiglu_packed")) -> list:
    """Count runs of the activation kernels (the down projection takes the SwiGLU variant): every path (public op,
    custom op, W4A4Linear's eager fast path) gets its implementation from the registry."""
    calls, original = [], registry.implementation

    def counting(op, device):
        impl = original(op, device)
        if op not in names:
            return impl

        def counted(*args, **kwargs):
            calls.append(op)
            return impl(*args, **kwargs)
        return counted

    monkeypatch.setattr(registry, "implementation", counting)
    return calls


def linears_of_one_input(gen, n_sizes=(40, 24, 16)) -> list:
    """Three W4A4Linears of one input (equal transform and clip, different weights), unlinked."""
    transform = KroneckerTransform(96, orthogonal_init=gen)
    modules = []
    for n in n_sizes:
        ql = QuantLinear(nn.Linear(96, n, bias=True), QuantSpec(4), QuantSpec(4), transform, learn_clips=True)
        with torch.no_grad():
            ql.act_clip_logit.fill_(1.5)
        ql.fold()
        modules.append(W4A4Linear.from_quant_linear(ql))
    return modules


def one_gemm_per_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a deployed model whose shared-input groups run a GEMM per member (`fused_gemm = False`)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, W4A4Linear) and m.shared_input is not None:
            m.shared_input.fused_gemm = False
    return twin
