"""The explicit registry of model families: architecture name -> configs and weight names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from genapi.layers import DecoderLM, TransformerConfig
from genapi.models.weights import WeightTable


@dataclass(frozen=True)
class ModelFamily:
    """Everything genapi knows about one architecture."""

    name: str  # genapi's name, e.g. "llama"
    config_from_hf: Callable[[Mapping[str, Any]], TransformerConfig]  # from config.json
    weight_table: Callable[[TransformerConfig], WeightTable]  # HF names -> genapi names
    tiny_config: Callable[[], TransformerConfig]  # small, same features, for tests
    presets: Mapping[str, Callable[[], TransformerConfig]] = field(default_factory=dict)
    hf_architectures: tuple[str, ...] = ()  # `architectures` values of config.json
    gguf_architectures: tuple[str, ...] = ()  # `general.architecture` values of GGUF files


_FAMILIES: dict[str, ModelFamily] = {}
_BY_HF: dict[str, ModelFamily] = {}
_BY_GGUF: dict[str, ModelFamily] = {}
_PRESETS: dict[str, tuple[ModelFamily, Callable[[], TransformerConfig]]] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add `family` to the registry; names must be unique across families."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    for arch in family.hf_architectures:
        _BY_HF[arch] = family
    for arch in family.gguf_architectures:
        _BY_GGUF[arch] = family
    for preset, build in family.presets.items():
        if preset in _PRESETS:
            raise ValueError(f"preset {preset!r} is already registered")
        _PRESETS[preset] = (family, build)
    return family


def families() -> dict[str, ModelFamily]:
    """All registered families by name."""
    return dict(_FAMILIES)


def get_family(name: str) -> ModelFamily:
    """The family registered as `name`.

    Raises:
        ValueError: naming the supported families.
    """
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(
            f"model family {name!r} is not supported; supported: {', '.join(sorted(_FAMILIES))}"
        ) from None


def family_for_hf_architecture(architecture: str) -> ModelFamily:
    """The family for a config.json `architectures` entry, e.g. "LlamaForCausalLM"."""
    try:
        return _BY_HF[architecture]
    except KeyError:
        raise ValueError(
            f"architecture {architecture!r} is not supported; supported: "
            f"{', '.join(sorted(_BY_HF))}"
        ) from None


def family_for_gguf_architecture(architecture: str) -> ModelFamily:
    """The family for a GGUF `general.architecture` value, e.g. "llama"."""
    try:
        return _BY_GGUF[architecture]
    except KeyError:
        raise ValueError(
            f"GGUF architecture {architecture!r} is not supported; supported: "
            f"{', '.join(sorted(_BY_GGUF))}"
        ) from None


def preset_names() -> list[str]:
    """Names of the real model configs genapi ships, e.g. "smollm2-135m"."""
    return sorted(_PRESETS)


def get_preset(name: str) -> tuple[ModelFamily, TransformerConfig]:
    """The family and real config of preset `name`.

    Raises:
        ValueError: naming the known presets.
    """
    try:
        family, build = _PRESETS[name]
    except KeyError:
        raise ValueError(
            f"model preset {name!r} is not known; known: {', '.join(sorted(_PRESETS))}"
        ) from None
    return family, build()


def build_model(config: TransformerConfig, *, device: str | None = None) -> DecoderLM:
    """A `DecoderLM` for `config`; `device="meta"` builds it without allocating weights."""
    if device is None:
        return DecoderLM(config)
    import torch

    with torch.device(device):
        return DecoderLM(config)
