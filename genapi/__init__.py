"""genapi: author small language models in PyTorch and ship them to phones and boards."""

from genapi.export.llm import export_llm
from genapi.generate import generate
from genapi.layers import DecoderLM, KVCache, TransformerConfig
from genapi.loading.checkpoint import (
    Checkpoint,
    load,
    model_weights,
    open_checkpoint,
    open_tokenizer,
)
from genapi.models import build_model, get_family, get_preset
from genapi.sampling import Sampler, SamplingConfig

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "DecoderLM",
    "KVCache",
    "Sampler",
    "SamplingConfig",
    "TransformerConfig",
    "__version__",
    "build_model",
    "export_llm",
    "generate",
    "get_family",
    "get_preset",
    "load",
    "model_weights",
    "open_checkpoint",
    "open_tokenizer",
]
