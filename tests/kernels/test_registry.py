"""Backend choice: use_backend blocks, the FAIRCALIB_BACKEND variable, device defaults, lazy Triton loading and
the errors for impossible choices."""
import os
import subprocess
import sys

import pytest
import torch

import faircalib.kernels as K
from faircalib.kernels import registry


@pytest.fixture
def no_env_backend(monkeypatch):
    monkeypatch.delenv("FAIRCALIB_BACKEND", raising=False)


def test_default_is_triton_on_cuda_and_reference_on_cpu(no_env_backend):
    assert K.backend("cpu") == "reference"
    assert K.backend("cuda") == ("triton" if registry.triton_available() else "reference")


def test_default_is_reference_everywhere_without_triton(no_env_backend, monkeypatch):
    monkeypatch.setattr(registry, "triton_available", lambda: False)
    assert K.backend("cuda") == "reference"


def test_env_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("FAIRCALIB_BACKEND", "triton")
    assert K.backend("cpu") == "triton"
    monkeypatch.setenv("FAIRCALIB_BACKEND", "reference")
    assert K.backend("cuda") == "reference"


def test_bad_env_variable_names_it(monkeypatch):
    monkeypatch.setenv("FAIRCALIB_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FAIRCALIB_BACKEND"):
        K.backend("cpu")


def test_use_backend_overrides_env_nests_and_restores(monkeypatch):
    monkeypatch.setenv("FAIRCALIB_BACKEND", "reference")
    with K.use_backend("triton"):
        assert K.backend("cpu") == "triton"
        with K.use_backend("reference"):
            assert K.backend("cuda") == "reference"
        assert K.backend("cpu") == "triton"
    assert K.backend("cpu") == "reference"


def test_use_backend_restores_after_an_exception(no_env_backend):
    with pytest.raises(RuntimeError):
        with K.use_backend("triton"):
            raise RuntimeError("boom")
    assert K.backend("cpu") == "reference"


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        with K.use_backend("fast"):
            pass


@pytest.mark.triton_on_cpu
def test_implementation_picks_the_registered_function(no_env_backend):
    from faircalib.kernels import quant, quant_reference
    assert registry.implementation("quantize_act", torch.device("cpu")) is quant_reference.quantize_act
    with K.use_backend("triton"):
        assert registry.implementation("quantize_act", torch.device("cpu")) is quant.quantize_act


def test_unknown_op_lists_the_known_ones():
    with pytest.raises(KeyError, match="quantize_act"):
        registry.implementation("no_such_op", torch.device("cpu"))


def test_forced_triton_without_interpreter_on_cpu_explains_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with K.use_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        registry.implementation("quantize_act", torch.device("cpu"))


def test_forced_triton_without_triton_installed(monkeypatch):
    monkeypatch.setattr(registry, "triton_available", lambda: False)
    with K.use_backend("triton"), pytest.raises(RuntimeError, match="pip install triton"):
        K.quantize_act(torch.ones(2, 4))


@pytest.mark.triton_on_cpu
def test_op_without_a_triton_kernel(monkeypatch):
    monkeypatch.setitem(registry._OPS, "only_reference", {"reference": lambda x: x})
    with K.use_backend("triton"), pytest.raises(NotImplementedError, match="only_reference"):
        registry.implementation("only_reference", torch.device("cpu"))


def test_triton_kernels_are_imported_only_when_first_needed():
    code = ("import sys, torch, faircalib.kernels as K\n"
            "assert 'faircalib.kernels.quant' not in sys.modules\n"
            "with K.use_backend('triton'):\n"
            "    K.quantize_act(torch.ones(2, 4))\n"
            "assert 'faircalib.kernels.quant' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "TRITON_INTERPRET": "1"})
    assert result.returncode == 0, result.stderr
