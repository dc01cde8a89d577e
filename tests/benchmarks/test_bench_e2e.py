"""`benchmarks/bench_e2e_gpu.py`'s variant strings: parsed up front, so a typo fails before any model is built."""
import pytest

from faircalib.kernels import gemm
from tests.benchmarks.scripts import load

bench = load("bench_e2e_gpu")


def test_variants_parse_into_options_and_launch_fields():
    assert bench.parse_variant("bf16:shared") == ("bf16", "shared", [], {})
    assert bench.parse_variant("fp32:separate:unpacked:unfused") == ("fp32", "separate", ["unpacked", "unfused"], {})
    assert bench.parse_variant("bf16:shared:int8only")[2] == ["int8only"]
    assert bench.parse_variant("bf16:shared:flattened")[2] == ["flattened"]
    factor, sharing, options, launch = bench.parse_variant("bf16:shared:act.split_over_tile=0:act.split_stages=2")
    assert (options, launch) == ([], {"split_over_tile": False, "split_stages": 2})
    # The fields set are those of gemm.ActLaunch, with its types.
    assert isinstance(launch["split_over_tile"], type(gemm.ACT_LAUNCH.split_over_tile))


@pytest.mark.parametrize("variant,named", [
    ("bf16", "want"), ("int8:shared", "want"), ("bf16:both", "want"), ("bf16:shared:fast", "want"),
    ("bf16:shared:act.no_such_field=1", "act.no_such_field"), ("bf16:shared:act.split_stages=two", "integer")])
def test_bad_variants_are_named(variant, named):
    with pytest.raises(ValueError, match=named) as error:
        bench.parse_variant(variant)
    assert repr(variant) in str(error.value)


def test_a_design_that_does_not_exist_is_refused_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(bench.sys, "argv", ["bench_e2e_gpu.py", "--design", "regs:9:9:9"])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2
    assert "invalid choice: 'regs:9:9:9'" in capsys.readouterr().err
    assert gemm.W4A4_DESIGN is None


@pytest.mark.parametrize("value,named", [("512:256", "three or four integers"), ("0:32:1", "at least one"),
                                         ("512:32:1:0", "the batch at least one"), ("1:32:1:1:1", "four integers"),
                                         ("512:48:3", "not divisible by block_length=32"),
                                         ("512:256:63", "steps=63 is not divisible"), ("a:b:c", "invalid literal"),
                                         ("512:256:64,512:48:3", "got '512:48:3'"),
                                         ("512:256:64:ragged", "need a batch of at least two"),
                                         ("512:256:64:1:ragged", "need a batch of at least two"),
                                         ("512:256:64:4:wavy", "invalid literal")])
def test_a_bad_generate_setting_is_refused_before_any_work(monkeypatch, value, named):
    monkeypatch.setattr(bench.sys, "argv", ["bench_e2e_gpu.py", "--generate", value])
    with pytest.raises(SystemExit, match=named):
        bench.main()
