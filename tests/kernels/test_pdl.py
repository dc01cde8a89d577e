"""`kernels/pdl.py`: which launches use programmatic dependent launch (the GPU results: `test_gemm_cuda.py`)."""
import torch

from faircalib.kernels import pdl


def test_pdl_only_on_gpus_and_when_enabled(monkeypatch):
    """CPU tensors (the interpreter cannot run griddepcontrol) never get it; nor anything while it is off."""
    monkeypatch.setattr(pdl, "ENABLED", True)
    assert pdl.pdl_launch(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setattr(pdl, "_supported", lambda index: True)
    assert pdl.pdl_launch(torch.device("cuda", 0)) == {"PDL": True, "launch_pdl": True}
    monkeypatch.setattr(pdl, "_supported", lambda index: False)  # before sm_90
    assert pdl.pdl_launch(torch.device("cuda", 0)) == {"PDL": False}
    monkeypatch.setattr(pdl, "ENABLED", False)
    monkeypatch.setattr(pdl, "_supported", lambda index: True)
    assert pdl.pdl_launch(torch.device("cuda", 0)) == {"PDL": False}
