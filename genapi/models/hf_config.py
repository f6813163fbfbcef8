"""Readers for Hugging Face config.json fields shared by several families."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from genapi.layers import RopeScaling, RotaryConfig


def require(hf: Mapping[str, Any], key: str) -> Any:
    """hf[key], or a ValueError naming the missing key."""
    if key not in hf or hf[key] is None:
        raise ValueError(f"config.json has no {key!r}, which this architecture needs")
    return hf[key]


def head_dim(hf: Mapping[str, Any]) -> int:
    """`head_dim`, or hidden_size / num_attention_heads when the config leaves it out."""
    value = hf.get("head_dim")
    if value:
        return int(value)
    return int(require(hf, "hidden_size")) // int(require(hf, "num_attention_heads"))


def rope_scaling(params: Mapping[str, Any] | None) -> RopeScaling | None:
    """Read a `rope_scaling` / `rope_parameters` dict; None or "default" means no scaling.

    Raises:
        NotImplementedError: for scaling types genapi does not implement yet.
    """
    if not params:
        return None
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return RopeScaling(
            kind="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_positions=int(params["original_max_position_embeddings"]),
        )
    raise NotImplementedError(
        f"rope scaling type {kind!r} is not supported yet: genapi implements 'linear' and 'llama3'"
    )


def rotary(hf: Mapping[str, Any], *, default_theta: float = 10_000.0) -> RotaryConfig:
    """The rotary config of a single-theta model, from either config.json dialect.

    Older configs carry `rope_theta` and `rope_scaling`; newer ones one `rope_parameters`
    dict holding `rope_theta`, `rope_type` and the scaling fields.
    """
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", default_theta))
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    return RotaryConfig(
        theta=float(theta),
        fraction=float(fraction),
        scaling=rope_scaling(params if params.get("rope_type") else legacy),
    )
