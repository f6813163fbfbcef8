"""genapi: author small language models in PyTorch and ship them to phones and boards.

Names are imported on first use, so that torch-free parts (the runtime, the tokenizer,
sampling) can be used without importing torch.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Checkpoint": "genapi.loading.checkpoint",
    "DecoderLM": "genapi.layers",
    "KVCache": "genapi.layers",
    "Sampler": "genapi.sampling",
    "SamplingConfig": "genapi.sampling",
    "TransformerConfig": "genapi.layers",
    "build_model": "genapi.models",
    "convert": "genapi.export.convert",
    "export_llm": "genapi.export.llm",
    "generate": "genapi.generation",
    "get_family": "genapi.models",
    "get_preset": "genapi.models",
    "load": "genapi.loading.checkpoint",
    "model_weights": "genapi.loading.checkpoint",
    "open_checkpoint": "genapi.loading.checkpoint",
    "open_tokenizer": "genapi.loading.checkpoint",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'genapi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
