"""transformers integration: `quant_method: "faircalib"` checkpoints load with `AutoModel.from_pretrained(dir)`.

`register()` (run by `import faircalib`) adds the quantization config and the quantizer to transformers'
registries, and registers the native LLaDA/Dream classes with AutoConfig/AutoModel. The quantizer swaps the
modules listed in the checkpoint's `quantization_config.modules` for `W4A4Linear` before transformers reads the
weights, so the packed buffers land in them, and links the linears of each input group after loading (their
input is quantized once, as in `load_quantized`). Without `import faircalib` transformers does not know the method
and loads a dense model with the packed tensors unused; after `from_pretrained`, `is_w4a4(model)` checks that the
swap happened. The quantizer verifies the weights file's checksum before loading, as `load_quantized` does.
"""
from __future__ import annotations

import functools

import torch
from transformers import AutoConfig, AutoModel
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "faircalib"
# Buffers transformers must not cast to the model dtype: integer codes and the fp32 numbers the kernels read. The
# transform factors are cast (to 16-bit dtypes), as `load_quantized` does by default (`checkpoint.factor_dtype_for`).
FP32_BUFFERS = ("weight_scale", "act_clip", "channel_scale")


class FaircalibQuantConfig(QuantizationConfigMixin):
    """The `quantization_config` of a faircalib W4A4 checkpoint (fields as `checkpoint.py` writes them)."""

    def __init__(self, modules: dict | None = None, version: str | None = None, fingerprint: str = "",
                 format: str = "w4a4-packed", format_version: int = 1, weight_layout: str = "split-nibble-k128",
                 sha256: str | None = None, **kwargs):
        self.quant_method = QUANT_METHOD
        self.modules = dict(modules or {})
        self.version, self.fingerprint, self.sha256 = version, fingerprint, sha256
        self.format, self.format_version, self.weight_layout = format, format_version, weight_layout

    def to_dict(self) -> dict:
        return {"quant_method": QUANT_METHOD, "modules": self.modules, "version": self.version,
                "fingerprint": self.fingerprint, "format": self.format, "format_version": self.format_version,
                "weight_layout": self.weight_layout, "sha256": self.sha256}


class FaircalibHfQuantizer(HfQuantizer):
    """Pre-quantized checkpoints only: swaps in W4A4Linear modules before the weights are read."""

    requires_calibration = True

    def validate_environment(self, *args, **kwargs) -> None:
        if not self.quantization_config.modules:
            raise ValueError("faircalib: quantization_config lists no W4A4 modules; the checkpoint is damaged")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        from faircalib.deploy.checkpoint import check_checksum, swap_w4a4_modules

        for path in checkpoint_files or []:
            check_checksum(path, self.quantization_config.sha256)
        swap_w4a4_modules(model, self.quantization_config.modules)
        # transformers casts every float tensor to the load dtype unless its name matches this (regex) set.
        model._keep_in_fp32_modules_strict = set(model._keep_in_fp32_modules_strict or ()) | set(FP32_BUFFERS)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from faircalib.deploy.shared_input import share_model_input_quantization

        share_model_input_quantization(model)  # q/k/v and gate/up quantize their shared input once
        return model

    def is_serializable(self, *args, **kwargs) -> bool:
        return False  # write with faircalib.deploy.save_quantized

    @property
    def is_trainable(self) -> bool:
        return False


def is_w4a4(model: torch.nn.Module) -> bool:
    """Whether `model` holds W4A4Linear modules (False: transformers loaded it dense)."""
    from faircalib.deploy.w4a4_linear import W4A4Linear

    return any(isinstance(m, W4A4Linear) for m in model.modules())


@functools.lru_cache(maxsize=None)
def register() -> None:
    """Register the config, the quantizer and the native model classes with transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(FaircalibQuantConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(FaircalibHfQuantizer)
    from faircalib.models import DreamConfig, DreamModel, LLaDAConfig, LLaDAModelLM

    for config_class, model_class in ((LLaDAConfig, LLaDAModelLM), (DreamConfig, DreamModel)):
        try:
            AutoConfig.register(config_class.model_type, config_class)
            AutoModel.register(config_class, model_class)
        except ValueError:
            pass  # already registered (by transformers itself or an earlier call)
