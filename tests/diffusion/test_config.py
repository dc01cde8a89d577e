import pytest

from faircalib.diffusion import SamplerConfig


def test_defaults_fill_remasking_and_one_block():
    config = SamplerConfig(gen_length=32, steps=8)
    assert config.remasking == "low_confidence"
    assert config.block_length == 32 and config.num_blocks == 1
    assert SamplerConfig(sampler="dream").remasking == "entropy"
    assert SamplerConfig(sampler="probe").remasking == "random"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gen_length": 30, "block_length": 8}, "not divisible by block_length=8"),
        ({"gen_length": 32, "block_length": 8, "steps": 6}, "not divisible by the number of blocks 4"),
        ({"sampler": "beam"}, "sampler 'beam' is unknown"),
        ({"remasking": "entropy"}, "remasking 'entropy' does not exist for sampler 'llada'"),
        ({"sampler": "dream", "remasking": "random"}, "does not exist for sampler 'dream'"),
        ({"sampler": "probe", "remasking": "low_confidence"}, "does not exist for sampler 'probe'"),
        ({"sampler": "dream", "block_length": 8}, "no meaning for sampler 'dream'"),
        ({"top_p": 0.9}, "options of sampler 'dream' only"),
        ({"sampler": "threshold", "threshold": 0.0}, "threshold=0.0 must lie in (0, 1]"),
        ({"steps": 0}, "must both be >= 1"),
        ({"temperature": -1.0}, "must be >= 0"),
        ({"sampler": "dream", "top_k": 0}, "top_k=0 must be >= 1"),
    ],
)
def test_bad_settings_raise_named_errors(kwargs, message):
    with pytest.raises(ValueError, match="diffusion.config") as error:
        SamplerConfig(**kwargs)
    assert message in str(error.value)


def test_threshold_steps_need_not_divide_blocks():
    config = SamplerConfig(sampler="threshold", gen_length=32, block_length=8, steps=3)
    assert config.num_blocks == 4


def test_to_dict_round_trips():
    config = SamplerConfig(sampler="dream", remasking="topk_margin", top_p=0.9, temperature=0.5)
    assert SamplerConfig(**config.to_dict()) == config
