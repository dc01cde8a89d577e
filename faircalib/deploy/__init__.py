"""faircalib.deploy: a calibrated model as a real W4A4 model.

- `W4A4Linear`, `convert_to_w4a4(model)`       packed INT4 weights + online transform + act quant (w4a4_linear.py)
- `share_input_quantization(modules)`          link the W4A4Linears of one input: quantized once, one GEMM (shared_input.py)
- `shared_input_groups(model)`                 the linked groups, to set their switches (fused_gemm, swiglu_epilogue)
- `keep_weights_unpacked(model)`               int8 weights (copies, or alone: drop_packed): no unpack pass per call
- `save_quantized`, `load_quantized`           packed safetensors checkpoints (checkpoint.py)
- `hf_quantizer.register()`                    `AutoModel.from_pretrained(dir)` for them (run by `import faircalib`)
- `export_compressed_tensors`                  the compressed-tensors int W4A4 pack-quantized layout
- `export_quantized(model, dir, fmt)`          the `--export faircalib|compressed-tensors` entry point (export.py)
- `check_exportable(method, qconfig, fmt)`     its refusals from the recipe alone, before calibrating
- `GraphedLogits(model)`                       the forward replayed from one CUDA graph per input shape (cuda_graph.py)
- `compile_model_blocks(adapter)`              `torch.compile` every block in place (cuda_graph.py)
Imported lazily, so `import faircalib` only pays for the transformers registration.
"""
import importlib

_LAZY = {
    "W4A4Linear": "w4a4_linear", "convert_to_w4a4": "w4a4_linear",
    "share_input_quantization": "shared_input", "share_model_input_quantization": "shared_input",
    "shared_input_groups": "shared_input",
    "keep_weights_unpacked": "w4a4_linear",
    "save_quantized": "checkpoint", "load_quantized": "checkpoint",
    "export_compressed_tensors": "compressed_tensors", "is_w4a4": "hf_quantizer",
    "export_quantized": "export", "check_exportable": "export", "EXPORT_FORMATS": "export",
    "GraphedLogits": "cuda_graph", "compile_model_blocks": "cuda_graph",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'faircalib.deploy' has no attribute {name!r}")
