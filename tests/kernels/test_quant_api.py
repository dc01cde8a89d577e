"""The public quantization functions of faircalib.kernels: input validation (errors name the argument and come
before any work), empty inputs, return types."""
import pytest
import torch

import faircalib.kernels as K


@pytest.mark.parametrize("call, error, words", [
    (lambda: K.fake_quant_act(torch.ones(2, 4, dtype=torch.int32)), TypeError, ["fake_quant_act", "x", "int32"]),
    (lambda: K.fake_quant_act([1.0, 2.0]), TypeError, ["x", "torch.Tensor"]),
    (lambda: K.fake_quant_act(torch.tensor(1.0)), ValueError, ["x", "dimension"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), bits=1), ValueError, ["bits=1", "2 <= bits <= 8"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), bits=9), ValueError, ["bits=9"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), bits=4.0), TypeError, ["bits"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), clip_ratio=torch.ones(3, 1)), ValueError,
     ["clip_ratio", "(3, 1)", "(2, 1)"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), clip_ratio=torch.ones(2, 1, dtype=torch.int64)), TypeError,
     ["clip_ratio"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), clip_ratio="0.9"), TypeError, ["clip_ratio"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), clip_ratio=0.0), ValueError, ["clip_ratio=0.0", "finite number > 0"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), clip_ratio=-1), ValueError, ["clip_ratio=-1"]),
    (lambda: K.fake_quant_act(torch.ones(2, 4), clip_ratio=float("nan")), ValueError, ["clip_ratio=nan"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 8), clip_ratio=float("inf")), ValueError, ["clip_ratio=inf"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 8), symmetric=False, clip_ratio=(0.9, 0.0)), ValueError,
     ["clip_ratio[1]=0.0"]),
    (lambda: K.quantize_act_packed(torch.ones(2, 4), clip_ratio=-0.5), ValueError,
     ["quantize_act_packed", "clip_ratio=-0.5"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 10), group_size=4), ValueError, ["group_size=4", "K=10"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 10), group_size=0), ValueError, ["group_size=0"]),
    (lambda: K.fake_quant_weight(torch.ones(2, 4, 8)), ValueError, ["w", "2 dimension", "(2, 4, 8)"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 8), clip_ratio=(0.9, 0.8)), ValueError, ["clip_ratio", "pair"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 8), symmetric=False, clip_ratio=(0.9,)), ValueError, ["pair"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 8), group_size=4, clip_ratio=torch.ones(4, 1, 1)), ValueError,
     ["clip_ratio", "(4, 2)"]),
    (lambda: K.fake_quant_weight(torch.ones(4, 8), symmetric=1), TypeError, ["symmetric"]),
    (lambda: K.quantize_act(torch.ones(3, dtype=torch.int8)), TypeError, ["quantize_act", "x"]),
    (lambda: K.quantize_weight(torch.ones(4, 6), group_size=4), ValueError, ["quantize_weight", "group_size"]),
    (lambda: K.quantize_weight(torch.ones(4, 6), bits=0), ValueError, ["bits=0"]),
    (lambda: K.pack_int4(torch.ones(4, 6)), TypeError, ["pack_int4", "int8"]),
    (lambda: K.pack_int4(torch.full((2, 3), 8, dtype=torch.int8)), ValueError, ["[-8, 7]"]),
    (lambda: K.unpack_int4(torch.ones(2, 3, dtype=torch.int8)), TypeError, ["unpack_int4", "uint8"]),
    (lambda: K.unpack_int4(torch.ones(2, 3, dtype=torch.uint8), k=4), ValueError, ["k=4", "6 or 5"]),
])
def test_bad_inputs_raise_naming_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty_inputs_give_empty_results(backend):
    with K.use_backend(backend):
        assert K.fake_quant_act(torch.empty(0, 8)).shape == (0, 8)
        codes, scales = K.quantize_act(torch.empty(3, 0, dtype=torch.bfloat16))
        assert codes.shape == (3, 0) and codes.dtype == torch.int8
        assert scales.shape == (3, 1) and (scales == 0).all()
        codes, scales, zeros = K.quantize_weight(torch.empty(0, 16), 4, 8, False)
        assert codes.shape == (0, 16) and scales.shape == (0, 2) and zeros.shape == (0, 2)
        assert K.pack_int4(torch.empty(2, 0, dtype=torch.int8)).shape == (2, 0)
        assert K.unpack_int4(torch.empty(2, 0, dtype=torch.uint8)).shape == (2, 0)
        x = torch.empty(0, 8, requires_grad=True)
        clip = torch.tensor(0.9, requires_grad=True)
        K.fake_quant_act(x, 4, clip).sum().backward()
        assert x.grad.shape == (0, 8) and clip.grad == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_outputs_keep_the_input_dtype_and_shape(gen, dtype):
    x = torch.randn(2, 3, 16, generator=gen).to(dtype)
    y = K.fake_quant_act(x, 4)
    assert y.dtype == dtype and y.shape == x.shape
    codes, scales = K.quantize_act(x, 4)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32 and scales.shape == (2, 3, 1)
    assert codes.min() >= -8 and codes.max() <= 7
    torch.testing.assert_close(y, (codes * scales).to(dtype), rtol=0, atol=0)


def test_quantize_weight_returns_zeros_only_when_asymmetric(gen):
    w = torch.randn(6, 32, generator=gen)
    assert len(K.quantize_weight(w, 4, 8)) == 2
    codes, scales, zeros = K.quantize_weight(w, 4, 8, symmetric=False)
    assert scales.shape == zeros.shape == (6, 4)
    dequant = (codes.float().reshape(6, 4, 8) - zeros[..., None]) * scales[..., None]
    torch.testing.assert_close(dequant.reshape(6, 32), K.fake_quant_weight(w, 4, 8, symmetric=False))


def test_codes_cover_the_range_of_every_bit_width(gen):
    x = torch.randn(4, 512, generator=gen)
    for bits in range(2, 9):
        codes, _ = K.quantize_act(x, bits)
        assert codes.min() >= -(2 ** (bits - 1)) and codes.max() == 2 ** (bits - 1) - 1


def test_pack_then_unpack_round_trips_quantized_codes(gen):
    codes, _ = K.quantize_act(torch.randn(5, 31, generator=gen), 4)
    packed = K.pack_int4(codes)
    assert packed.shape == (5, 16)
    assert torch.equal(K.unpack_int4(packed, 31), codes)
