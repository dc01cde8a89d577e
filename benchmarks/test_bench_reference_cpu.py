"""pytest-benchmark suite of the CPU reference quantization ops (not part of tests/: timing, not checking).

    python -m pytest benchmarks/test_bench_reference_cpu.py --benchmark-only

Shapes are one LLaDA-8B hidden row block (256 tokens x 4096) and one 4096x4096 weight, bf16 like calibration.
"""
import pytest
import torch

import faircalib.kernels as K

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def act():
    return torch.randn(256, 4096, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)


@pytest.fixture(scope="module")
def weight():
    return torch.randn(4096, 4096, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)


@pytest.fixture(autouse=True)
def reference_backend():
    with K.use_backend("reference"):
        yield


def test_fake_quant_act_forward(benchmark, act):
    benchmark(K.fake_quant_act, act, 4)


def test_fake_quant_act_forward_backward(benchmark, act):
    clip = torch.full((256, 1), 0.9, requires_grad=True)
    x = act.clone().requires_grad_()

    def step():
        K.fake_quant_act(x, 4, clip).float().sum().backward()

    benchmark(step)


def test_quantize_act(benchmark, act):
    benchmark(K.quantize_act, act, 4)


@pytest.mark.parametrize("group_size, symmetric", [(-1, True), (128, False)])
def test_fake_quant_weight(benchmark, weight, group_size, symmetric):
    benchmark(K.fake_quant_weight, weight, 4, group_size, symmetric)


def test_quantize_weight_and_pack(benchmark, weight):
    def quantize_and_pack():
        codes, _ = K.quantize_weight(weight, 4)
        return K.pack_int4(codes)

    benchmark(quantize_and_pack)
