"""One entry point from a checkpoint (folder, hub id, GGUF file) to a genapi model."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genapi.layers import DecoderLM, TransformerConfig
from genapi.loading import huggingface
from genapi.loading.lazy import LazyTensors
from genapi.models import (
    ModelFamily,
    WeightMismatchError,
    build_model,
    families,
    family_for_hf_architecture,
    get_family,
    load_weights,
    plan_mapping,
)

logger = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    """A checkpoint opened but not read: its config and lazily read tensors."""

    path: Path  # the folder or GGUF file
    hf_config: dict[str, Any]  # config.json, or its equivalent rebuilt from GGUF metadata
    family: ModelFamily  # the genapi model family it belongs to
    config: TransformerConfig  # the genapi config built from hf_config
    tensors: Mapping[str, torch.Tensor]  # Hugging Face names -> tensors, read on access
    format: str  # "safetensors", "pytorch", or "gguf"


def _pick_family(hf_config: Mapping[str, Any], architecture: str | None) -> ModelFamily:
    if architecture is not None:
        if architecture in families():
            return get_family(architecture)
        return family_for_hf_architecture(architecture)
    archs = hf_config.get("architectures") or []
    if not archs:
        raise ValueError(
            "config.json has no 'architectures'; pass architecture= one of "
            f"{', '.join(sorted(families()))}"
        )
    return family_for_hf_architecture(archs[0])


def open_checkpoint(source: str | Path, *, architecture: str | None = None) -> Checkpoint:
    """Open a checkpoint without reading its weights.

    Args:
        source: a Hugging Face checkpoint folder, a hub repo id ("owner/name"), or a
            `.gguf` file.
        architecture: overrides the architecture found in the checkpoint; a genapi family
            name ("llama") or a Hugging Face class name ("LlamaForCausalLM").

    Raises:
        FileNotFoundError: if the source does not exist or holds no readable weights.
        ValueError: if the architecture is not supported (the message lists those that are).
    """
    text = str(source)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {text!r} does not exist")
        from genapi.loading.gguf import GGUFCheckpoint

        reader = GGUFCheckpoint(path)
        hf_config = reader.hf_config()
        tensors: Mapping[str, torch.Tensor] = LazyTensors(reader.tensor_names(), reader.read_tensor)
        fmt = "gguf"
    else:
        if not path.exists():
            if not huggingface.is_hub_id(text):
                raise FileNotFoundError(
                    f"{text!r} is neither an existing folder, a .gguf file, nor a hub repo id "
                    "like 'owner/name'"
                )
            path = huggingface.resolve_hub_id(text)
        if not path.is_dir():
            raise ValueError(
                f"{text!r} is a file; pass a Hugging Face checkpoint folder or a .gguf file"
            )
        hf_config = huggingface.read_config(path)
        tensors = huggingface.folder_tensors(path)
        fmt = "safetensors" if isinstance(tensors, huggingface.SafetensorsTensors) else "pytorch"

    try:
        family = _pick_family(hf_config, architecture)
        config = family.config_from_hf(hf_config)
    except (ValueError, NotImplementedError) as err:
        raise type(err)(f"{str(path)!r}: {err}") from None
    config = dataclasses.replace(config, name=path.stem if fmt == "gguf" else path.name)
    logger.info("opened %s (%s, %s family, %d tensors)", path, fmt, family.name, len(tensors))
    return Checkpoint(
        path=path, hf_config=hf_config, family=family, config=config, tensors=tensors, format=fmt
    )


def load(
    source: str | Path | Checkpoint,
    *,
    architecture: str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> DecoderLM:
    """Load a checkpoint into a genapi model, holding one copy of the weights.

    The model is built on the meta device and each tensor is read, converted to `dtype` and
    put in place one at a time.

    Args:
        source: as for `open_checkpoint`, or an already opened `Checkpoint`.
        architecture: as for `open_checkpoint`.
        dtype: the dtype of the model's weights.
        progress: show a progress bar while loading, when stderr is a terminal.

    Returns:
        The model, in eval mode.

    Raises:
        FileNotFoundError, ValueError: as for `open_checkpoint`.
        genapi.models.WeightMismatchError: listing missing, unexpected and wrongly shaped
            tensors.
    """
    ckpt = (
        source
        if isinstance(source, Checkpoint)
        else open_checkpoint(source, architecture=architecture)
    )
    model = build_model(ckpt.config, device="meta").to(dtype)
    table = ckpt.family.weight_table(ckpt.config)
    try:
        load_weights(
            model, ckpt.tensors, table, num_layers=ckpt.config.num_layers, progress=progress
        )
    except WeightMismatchError as err:
        raise WeightMismatchError(f"{str(ckpt.path)!r}: {err}") from None
    model.reset_buffers(device="cpu")
    return model.eval()


def open_tokenizer(checkpoint: Checkpoint):
    """The tokenizer stored with `checkpoint` (inside the GGUF file or in the folder)."""
    from genapi.tokenizer import Tokenizer

    if checkpoint.format == "gguf":
        return Tokenizer.from_gguf(checkpoint.path)
    return Tokenizer.from_folder(checkpoint.path)


def model_weights(checkpoint: Checkpoint) -> Mapping[str, torch.Tensor]:
    """The checkpoint's tensors under genapi parameter names, still read lazily.

    This is what the converter streams from: pass it as `weights=` together with a model
    built on the meta device, and no tensor is read before the file is written.

    Raises:
        genapi.models.WeightMismatchError: as for `load`.
    """
    meta_model = build_model(checkpoint.config, device="meta")
    table = checkpoint.family.weight_table(checkpoint.config)
    try:
        plan = plan_mapping(
            checkpoint.tensors.keys(), meta_model, table, checkpoint.config.num_layers
        )
    except WeightMismatchError as err:
        raise WeightMismatchError(f"{str(checkpoint.path)!r}: {err}") from None
    source_of = {dst: src for src, dst in plan.items()}  # genapi name -> checkpoint name
    return LazyTensors(source_of, lambda name: checkpoint.tensors[source_of[name]])
