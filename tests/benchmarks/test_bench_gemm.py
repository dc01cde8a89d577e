"""`benchmarks/bench_gemm_gpu.py --only`: the shape filter, checked before any GPU work."""
import pytest

from tests.benchmarks.scripts import load

bench = load("bench_gemm_gpu")


def test_only_selects_shapes_by_model_and_role():
    assert bench.select_shapes("") == bench.SHAPES
    assert [role for _, role, _, _ in bench.select_shapes("stacked")] == \
        ["gate+up stacked", "q+k+v stacked", "gate+up stacked"]
    assert [(model, role) for model, role, _, _ in bench.select_shapes("dream-7b down,llada-8b gate+up")] == \
        [("dream-7b", "down"), ("llada-8b", "gate+up stacked")]


def test_only_matching_nothing_names_the_shapes():
    with pytest.raises(ValueError, match=r"'nothing' matches none of .*'llada-8b q/k/v/o'"):
        bench.select_shapes("nothing")
