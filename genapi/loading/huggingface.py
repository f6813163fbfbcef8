"""Hugging Face checkpoints: folders (safetensors, sharded, pytorch_model.bin) and hub ids.

Tensors are read lazily: a checkpoint is a mapping from Hugging Face tensor names to tensors
that reads one tensor from disk each time it is indexed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genapi.loading.lazy import LazyTensors

logger = logging.getLogger(__name__)

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# What a hub download needs; weights in other formats are not fetched.
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "*.safetensors",
    SAFETENSORS_INDEX,
]


class SafetensorsTensors(LazyTensors):
    """Tensors of one or more safetensors files, each read when it is asked for."""

    def __init__(self, files: dict[str, Path]):
        self._file_of = files  # tensor name -> file holding it
        super().__init__(files, self._read_tensor)

    @classmethod
    def from_folder(cls, folder: Path) -> SafetensorsTensors:

        index = folder / SAFETENSORS_INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: folder / shard for name, shard in weight_map.items()}
            for shard in sorted(set(files.values())):
                if not shard.is_file():
                    raise FileNotFoundError(f"{index} lists shard {shard.name!r}, which is missing")
            return cls(files)
        single = folder / SAFETENSORS
        if not single.is_file():
            candidates = sorted(folder.glob("*.safetensors"))
            if len(candidates) != 1:
                raise FileNotFoundError(f"no {SAFETENSORS} or {SAFETENSORS_INDEX} in {folder}")
            single = candidates[0]
        with _open_safetensors(single) as f:
            return cls({name: single for name in f.keys()})

    def _read_tensor(self, name: str) -> torch.Tensor:
        path = self._file_of[name]
        with _open_safetensors(path) as f:
            try:
                return f.get_tensor(name)
            except Exception as err:  # safetensors raises its own error type for bad data
                raise ValueError(f"{str(path)!r}: cannot read tensor {name!r}: {err}") from None


def _open_safetensors(path: Path):
    """safe_open, with damaged files reported as a ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(path, framework="pt")
    except SafetensorError as err:
        raise ValueError(
            f"{str(path)!r} is not a readable safetensors file ({err}); is it truncated?"
        ) from None


def load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `pytorch_model.bin`, unpickled with `weights_only=True` (no code runs).

    Raises:
        ValueError: if the pickle holds more than tensors and plain containers.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{str(path)!r} needs more than tensors to unpickle, and genapi loads .bin files "
            "with weights_only=True so that no code in them runs; convert it to safetensors"
        ) from None


def folder_tensors(folder: Path) -> Mapping[str, torch.Tensor]:
    """The tensors of a Hugging Face checkpoint folder, lazily where the format allows.

    Raises:
        FileNotFoundError: when the folder has no weights genapi can read.
    """
    if (folder / SAFETENSORS_INDEX).is_file() or any(folder.glob("*.safetensors")):
        return SafetensorsTensors.from_folder(folder)
    if (folder / TORCH_BIN).is_file():
        return load_torch_bin(folder / TORCH_BIN)
    if (folder / TORCH_BIN_INDEX).is_file():
        weight_map = json.loads((folder / TORCH_BIN_INDEX).read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(load_torch_bin(folder / shard))
        return tensors
    raise FileNotFoundError(
        f"no weights in {folder}: expected {SAFETENSORS}, {SAFETENSORS_INDEX} or {TORCH_BIN}"
    )


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a checkpoint folder, as a dict."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a Hugging Face checkpoint?")
    config = json.loads(path.read_text())
    # Multimodal wrappers keep the language model's fields under text_config.
    if "text_config" in config and "hidden_size" not in config:
        text = dict(config["text_config"])
        text.setdefault("architectures", config.get("architectures"))
        return text
    return config


def is_hub_id(source: str) -> bool:
    """Whether `source` looks like "owner/name" rather than a path on disk."""
    parts = source.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not source.startswith((".", "~"))
        and not Path(source).exists()
    )


def resolve_hub_id(repo_id: str, *, revision: str | None = None) -> Path:
    """The local folder of hub repo `repo_id`, from the cache or downloaded when online.

    Honours `HF_HUB_OFFLINE`: offline, only the local cache is used.

    Raises:
        FileNotFoundError: when offline (or unreachable) and the repo is not cached.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        path = snapshot_download(
            repo_id, revision=revision, allow_patterns=HUB_PATTERNS, local_files_only=offline
        )
    except LocalEntryNotFoundError:
        where = "HF_HUB_OFFLINE is set" if offline else "the hub could not be reached"
        raise FileNotFoundError(
            f"hub repo {repo_id!r} is not in the local Hugging Face cache and {where}; "
            "download it first or pass a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"hub repo {repo_id!r} does not exist or needs a login; check the name"
        ) from None
    return Path(path)
