"""faircalib: frontier-aware W4A4 calibration (FAIR-Calib) and INT4 kernels for diffusion LLMs.

Public API (imported lazily so `import faircalib` stays cheap):
- `QuantConfig`, `QuantSpec`            quantization schemes as data (faircalib.config)
- `calibrate(...)`                      Stage I + Stage II on a model (faircalib.calib.pipeline)
- `load_model`, `get_adapter`           native LLaDA / Dream models and the shipped tiny ones (faircalib.models)
- `generate`, `SamplerConfig`           diffusion samplers that record a Trajectory (faircalib.diffusion)
- `faircalib.kernels`                   INT4 fake-quant, weighted MSE, clip search, W4A4 GEMM (Triton + reference)
"""
from faircalib.config import QuantConfig, QuantSpec

__version__ = "0.1.0"

_LAZY = {
    "calibrate": ("faircalib.calib.pipeline", "calibrate"),
    "load_model": ("faircalib.models", "load_model"),
    "get_adapter": ("faircalib.models", "get_adapter"),
    "generate": ("faircalib.diffusion", "generate"),
    "SamplerConfig": ("faircalib.diffusion", "SamplerConfig"),
    "load_quantized": ("faircalib.deploy.checkpoint", "load_quantized"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'faircalib' has no attribute {name!r}")


__all__ = ["QuantConfig", "QuantSpec", "__version__", *_LAZY]

# W4A4 checkpoints (quant_method "faircalib") load through transformers.AutoModel once faircalib is imported.
from faircalib.deploy.hf_quantizer import register as _register_hf_quantizer  # noqa: E402

_register_hf_quantizer()
