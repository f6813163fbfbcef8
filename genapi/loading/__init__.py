"""Checkpoint sources (Hugging Face folders, hub ids, GGUF files), read lazily."""

from genapi.loading.checkpoint import (
    Checkpoint,
    load,
    model_weights,
    open_checkpoint,
    open_tokenizer,
)
from genapi.loading.gguf import (
    GGUFCheckpoint,
    llama_cpp_permute_qk,
    llama_cpp_unpermute_qk,
    supported_tensor_types,
)

__all__ = [
    "Checkpoint",
    "GGUFCheckpoint",
    "llama_cpp_permute_qk",
    "llama_cpp_unpermute_qk",
    "load",
    "model_weights",
    "open_checkpoint",
    "open_tokenizer",
    "supported_tensor_types",
]
