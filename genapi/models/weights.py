"""Weight-name tables and the one generic loader that reads them.

Each model family declares a `WeightTable`: source (Hugging Face) tensor names mapped to
genapi module names, with a `{layer}` placeholder for per-block entries. A table may list
optional tensors (biases) that a given config does not have; loading is still strict: every
model weight must be filled, and every source tensor must map to a model weight or be listed
as ignored.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)

LAYER = "{layer}"


@dataclass(frozen=True)
class WeightTable:
    """Source tensor names -> genapi parameter names for one model family."""

    top: Mapping[str, str]  # names outside the blocks
    per_layer: Mapping[str, str]  # names with a {layer} placeholder on both sides
    ignored: tuple[str, ...] = ()  # source names dropped when present (may hold {layer})

    def expand(self, num_layers: int) -> dict[str, str]:
        """The full mapping for a model of `num_layers` blocks."""
        names = dict(self.top)
        for i in range(num_layers):
            for src, dst in self.per_layer.items():
                names[src.replace(LAYER, str(i))] = dst.replace(LAYER, str(i))
        return names

    def ignored_names(self, num_layers: int) -> set[str]:
        out = set()
        for name in self.ignored:
            if LAYER in name:
                out.update(name.replace(LAYER, str(i)) for i in range(num_layers))
            else:
                out.add(name)
        return out


class WeightMismatchError(ValueError):
    """Raised when checkpoint tensors and model weights do not line up; lists every name."""


def plan_mapping(
    source_names: Iterable[str], model: nn.Module, table: WeightTable, num_layers: int
) -> dict[str, str]:
    """Check names only (no tensor data) and return source name -> model name.

    Raises:
        WeightMismatchError: listing model weights no source fills and source tensors that
            map to nothing.
    """
    names = table.expand(num_layers)
    ignored = table.ignored_names(num_layers)
    wanted = set(model.state_dict().keys())
    plan, unexpected = {}, []
    for src in source_names:
        if src in ignored:
            continue
        dst = names.get(src)
        if dst is None or dst not in wanted:
            unexpected.append(src)
        else:
            plan[src] = dst
    missing = sorted(wanted - set(plan.values()))
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {', '.join(missing)}")
    if unexpected:
        problems.append(f"not used by the model: {', '.join(sorted(unexpected))}")
    if problems:
        raise WeightMismatchError("checkpoint does not match the model; " + "; ".join(problems))
    return plan


@torch.no_grad()
def load_weights(
    model: nn.Module,
    source: Mapping[str, torch.Tensor],
    table: WeightTable,
    *,
    num_layers: int,
    progress: bool = False,
) -> nn.Module:
    """Copy tensors from `source` into `model`, one at a time, renamed through `table`.

    `source` may be lazy (a mapping that reads a tensor when indexed), so that only one
    tensor beyond the model's own weights is in memory at once. Parameters still on the
    meta device are replaced by the loaded tensors.

    Args:
        model: the genapi model to fill.
        source: checkpoint tensors under their source names.
        table: the family's weight-name table.
        num_layers: number of blocks of `model`.
        progress: show a progress bar (tensors loaded) when stderr is a terminal.

    Returns:
        `model`, filled.

    Raises:
        WeightMismatchError: on missing, unexpected or wrongly shaped tensors, all listed.
    """
    plan = plan_mapping(source.keys(), model, table, num_layers)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    wrong_shape = []
    show = progress and sys.stderr.isatty()
    for src, dst in tqdm(plan.items(), desc="loading", unit="tensor", disable=not show):
        tensor = source[src]
        target = params[dst]
        if tuple(tensor.shape) != tuple(target.shape):
            wrong_shape.append(f"{src} {tuple(tensor.shape)} -> {dst} {tuple(target.shape)}")
            continue
        _assign(model, dst, target, tensor)
    if wrong_shape:
        raise WeightMismatchError("wrongly shaped tensors: " + "; ".join(wrong_shape))
    return model


def _assign(model: nn.Module, name: str, target: torch.Tensor, tensor: torch.Tensor) -> None:
    if target.device.type != "meta":
        target.copy_(tensor)
        return
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    value = tensor.to(target.dtype)
    if isinstance(target, nn.Parameter):
        value = nn.Parameter(value, requires_grad=target.requires_grad)
    setattr(module, attr, value)
