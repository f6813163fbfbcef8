"""Model families: real configs, tiny test configs and weight-name tables, in one registry."""

from genapi.models import gemma3, llama, phi2, qwen2, tiny_llm  # noqa: F401  (registration)
from genapi.models.registry import (
    ModelFamily,
    build_model,
    families,
    family_for_gguf_architecture,
    family_for_hf_architecture,
    get_family,
    get_preset,
    preset_names,
    register,
)
from genapi.models.weights import WeightMismatchError, WeightTable, load_weights, plan_mapping

__all__ = [
    "ModelFamily",
    "WeightMismatchError",
    "WeightTable",
    "build_model",
    "families",
    "family_for_gguf_architecture",
    "family_for_hf_architecture",
    "get_family",
    "get_preset",
    "load_weights",
    "plan_mapping",
    "preset_names",
    "register",
]
