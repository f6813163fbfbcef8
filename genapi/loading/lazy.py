"""A mapping of tensor names to tensors that reads a tensor only when it is indexed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import torch


class LazyTensors(Mapping[str, torch.Tensor]):
    """Names known up front; `read(name)` called on each lookup, never to test membership."""

    def __init__(self, names: Iterable[str], read: Callable[[str], torch.Tensor]):
        self._names = list(names)
        self._name_set = set(self._names)
        self._read = read

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._name_set:
            raise KeyError(name)
        return self._read(name)

    def __contains__(self, name: object) -> bool:
        return name in self._name_set

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
