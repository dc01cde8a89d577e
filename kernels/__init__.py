"""faircalib.kernels: INT4 quantization, calibration-loss and W4A4 deployment ops (`api.py`), their PyTorch references
(`*_reference.py`) and Triton kernels (`quant.py`, `loss.py`, `gemm.py`), registered as `torch.ops.faircalib.*`."""

# The checkout's root holds this directory as `kernels/`, so where the root is on sys.path (`python -m pytest`,
# `python -c` run there) the top-level name `kernels` finds it first. That name belongs to the Hugging Face package
# transformers >= 5 depends on and imports: hand the name over to it instead of running this package twice.
if __name__ == "kernels":
    from ._hf_kernels import hand_over

    hand_over()
else:
    from .api import *  # noqa: F401,F403
    from .api import __all__  # noqa: F401
