"""What differs between the versions this package supports, in one place.

Supported: Axolotl 0.19.0 (peft 0.20.0, transformers 5.16.1, trl 1.9.0) and Axolotl 0.21.0
(peft 0.21.2, transformers 5.20.1, trl 1.14.1). Everything the plugin and the rank dropout use
is the same on both, with one difference, handled without a version check in plugin.py:

- Axolotl >= 0.20 re-draws every lora_A from the seed right after the `post_lora_load` hook
  (when init_lora_weights is true and no lora_model_dir is set), so the plugin initialises
  MiLoRA in `post_model_load`, which both versions call after that, and DropLoRACallback stops
  training if anything changed an SVD init before the first step.

The one that needs code is below.
"""

from __future__ import annotations

from pathlib import Path


def float32_model_from_gguf(gguf_path: Path):
    """A plain float32 transformers model from a GGUF file, savable with save_pretrained.

    transformers 5.16 dequantizes GGUF weights on load and returns a plain model. transformers
    5.20 loads GGUF through a quantizer (GgufHfQuantizer) that keeps the weights in their blocks
    where a matmul kernel is found and refuses to save the model ("is quantized with
    QuantizationMethod.GGUF and is not serializable"): ask it to dequantize, then drop the
    quantizer, which holds nothing once every weight is a float32 tensor.
    """
    from transformers import AutoModelForCausalLM

    try:
        from transformers import GgufConfig  # transformers >= 5.20
    except ImportError:  # transformers 5.16: dequantized on load
        quantization = {}
    else:
        quantization = {"quantization_config": GgufConfig(gguf_file=gguf_path.name, dequantize=True)}
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, **quantization)
    if quantization:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):  # absent when nothing was quantized
            del model.config.quantization_config
    return model
