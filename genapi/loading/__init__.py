"""Checkpoint sources read lazily and named the Hugging Face way."""

from genapi.loading.gguf import (
    GGUFCheckpoint,
    llama_cpp_permute_qk,
    llama_cpp_unpermute_qk,
    supported_tensor_types,
)

__all__ = [
    "GGUFCheckpoint",
    "llama_cpp_permute_qk",
    "llama_cpp_unpermute_qk",
    "supported_tensor_types",
]
