"""Weight quantization for the writer: the arithmetic, the recipes and which part gets what.

Every scheme is symmetric (zero point 0) and quantizes along the output channels (axis 0 of a
`[out, in]` weight, the rows of an embedding table), which is what TFLite's hybrid kernels and
XNNPACK accept:

- `int8`: one float32 scale per row, values in [-127, 127].
- `int4`: blocks of `block_size` consecutive columns per row, one scale per block stored as
  float16, values in [-8, 7]. XNNPACK reads the scales as bfloat16, so they are rounded to
  values that bfloat16 and float16 both hold exactly and the runtimes agree.
- `fp16`: the weight stored as float16.

A recipe names the scheme of each part of a language model (embedding table, attention and
feed-forward projections, output head) and whether linear layers use the stored integers
directly with float activations ("dynamic", the hybrid kernels) or through a DEQUANTIZE op to
float weights ("weight only").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

logger = logging.getLogger(__name__)

# Parts of a language model a recipe can set one by one.
PARTS = ("embedding", "attention", "feed_forward", "head")

# Storage schemes.
SCHEMES = ("none", "fp16", "int8", "int4")

BLOCK_SIZES = (32, 64, 128)

# Elements quantized at once; bounds the float temporaries of one weight to a few MB.
_CHUNK_ELEMENTS = 1 << 20

# Smallest scale used: keeps all-zero rows finite and float16 scales out of subnormals.
_MIN_SCALE = 2.0**-14


@dataclass(frozen=True)
class PartQuant:
    """How one part is stored and computed."""

    scheme: str = "none"  # one of SCHEMES
    dynamic: bool = False  # linear layers run the hybrid kernel on the stored integers
    block_size: int | None = None  # int4 only
    # int4 only: each block also gets an offset (an asymmetric range, like a zero point). The
    # int4 kernels are symmetric, so the offsets are applied by a second, small product with
    # the per-block sums of the input (see `genapi.export.lowerings`).
    zero_points: bool = False

    @property
    def key(self) -> str:
        """Identifies the stored form: equal keys mean one stored copy can serve both uses."""
        if self.scheme != "int4":
            return self.scheme
        return f"int4b{self.block_size}" + ("z" if self.zero_points else "")


@dataclass(frozen=True)
class QuantRecipe:
    """A named recipe and its per-part schemes."""

    name: str
    parts: Mapping[str, PartQuant] = field(default_factory=dict)

    def part(self, name: str) -> PartQuant:
        return self.parts.get(name, PartQuant())

    @property
    def is_float(self) -> bool:
        return all(p.scheme == "none" for p in self.parts.values())


def _recipe_parts(name: str, block_size: int) -> dict[str, PartQuant]:
    if name == "none":
        scheme = PartQuant()
    elif name == "fp16":
        scheme = PartQuant("fp16")
    elif name == "dynamic_int8":
        scheme = PartQuant("int8", dynamic=True)
    elif name == "weight_only_int8":
        scheme = PartQuant("int8", dynamic=False)
    elif name == "dynamic_int4":
        scheme = PartQuant("int4", dynamic=True, block_size=block_size, zero_points=True)
    else:
        raise ValueError(f"unknown quantization recipe {name!r}; valid: {', '.join(RECIPES)}")
    return dict.fromkeys(PARTS, scheme)


RECIPES = ("none", "fp16", "dynamic_int8", "weight_only_int8", "dynamic_int4")


def recipe(
    name: str = "none",
    *,
    block_size: int = 32,
    overrides: Mapping[str, str] | None = None,
) -> QuantRecipe:
    """Build a recipe by name, with optional per-part overrides by recipe name.

    Example: `recipe("dynamic_int4", overrides={"head": "dynamic_int8"})` stores the linear
    layers and the embedding as int4 blocks of 32 and the output head as int8 rows.

    Raises:
        ValueError: naming an unknown recipe, part or block size.
    """
    if block_size not in BLOCK_SIZES:
        raise ValueError(
            f"block size {block_size!r} is not supported; valid: {', '.join(map(str, BLOCK_SIZES))}"
        )
    parts = _recipe_parts(name, block_size)
    for part, override in (overrides or {}).items():
        if part not in PARTS:
            raise ValueError(f"unknown model part {part!r} to quantize; valid: {', '.join(PARTS)}")
        parts[part] = _recipe_parts(override, block_size)[part]
    return QuantRecipe(name, parts)


def with_block_size(r: QuantRecipe, block_size: int) -> QuantRecipe:
    """`r` with every int4 part using `block_size`."""
    parts = {
        k: replace(p, block_size=block_size) if p.scheme == "int4" else p
        for k, p in r.parts.items()
    }
    return QuantRecipe(r.name, parts)


def fit_block_size(part: PartQuant, shape, *, name: str = "") -> PartQuant:
    """`part` for a weight of `shape`: int4 blocks that do not divide its columns become the
    largest supported size that does (else int8 rows), with a log line saying so."""
    if part.scheme != "int4":
        return part
    columns = int(np.prod(shape[1:], dtype=np.int64))
    if columns % part.block_size == 0:
        return part
    fits = [b for b in BLOCK_SIZES if b < part.block_size and columns % b == 0]
    if fits:
        logger.info(
            "%s: %d columns are not a multiple of %d; using int4 blocks of %d",
            name, columns, part.block_size, fits[-1],
        )  # fmt: skip
        return replace(part, block_size=fits[-1])
    logger.info("%s: no int4 block size divides %d columns; using int8 rows", name, columns)
    return PartQuant("int8", dynamic=part.dynamic)


# -- arithmetic -----------------------------------------------------------------------------


def int8_per_channel(weight: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization with one scale per index of `axis`.

    Returns:
        (int8 values of the weight's shape, float32 scales of length `weight.shape[axis]`),
        with `weight ~= values * scales` broadcast along `axis`.
    """
    w = np.asarray(weight, dtype=np.float32)
    axis = axis % w.ndim
    others = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.max(np.abs(w), axis=others, keepdims=True) if others else np.abs(w)
    scale = np.maximum(amax / 127.0, _MIN_SCALE).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1)


def bf16_exact_fp16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest value both bfloat16 and float16 represent."""
    x = np.maximum(np.asarray(x, dtype=np.float32), _MIN_SCALE)
    bits = x.view(np.uint32)
    # Round to nearest even at bit 16 (bfloat16 keeps the top 16 bits of a float32).
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32).astype(np.float16)


def _blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """A `[rows, columns]` weight as float32 `[rows, columns / block_size, block_size]`."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % block_size:
        raise ValueError(
            f"int4 blocks of {block_size} need a 2-D weight whose columns they divide, "
            f"got shape {list(w.shape)}"
        )
    return w.reshape(w.shape[0], -1, block_size)


def int4_blockwise(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 quantization of a `[rows, columns]` weight in blocks along the columns.

    Returns:
        (int8 values in [-8, 7] of the weight's shape, float16 scales `[rows, columns /
        block_size]`), with `weight ~= values * scales` repeated over each block.

    Raises:
        ValueError: if the weight is not 2-D or `block_size` does not divide its columns.
    """
    blocks = _blocks(weight, block_size)
    rows, columns = blocks.shape[0], blocks.shape[1] * block_size
    # Symmetric over [-8, 7]: the largest magnitude maps to -8 or 7, whichever keeps the sign.
    amax = np.max(np.abs(blocks), axis=2)
    scale16 = bf16_exact_fp16(amax / 7.0)
    scale = scale16.astype(np.float32)[:, :, None]
    q = np.clip(np.rint(blocks / scale), -8, 7).astype(np.int8)
    return q.reshape(rows, columns), scale16


def int4_blockwise_asymmetric(
    weight: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Int4 blocks spanning each block's own [min, max], as symmetric values plus an offset.

    Returns:
        (int8 values in [-8, 7], float16 scales `[rows, blocks]`, float32 offsets `[rows,
        blocks]`), with `weight ~= values * scales + offsets` over each block. The offset is
        the least-squares one for the rounded values, so a weight that already lies on a
        16-level grid per block (as GGUF's Q4_1 stores it) comes back almost exactly.
    """
    blocks = _blocks(weight, block_size)
    rows, columns = blocks.shape[0], blocks.shape[1] * block_size
    low = blocks.min(axis=2, keepdims=True)
    high = blocks.max(axis=2, keepdims=True)
    scale16 = bf16_exact_fp16(((high - low) / 15.0)[:, :, 0])
    scale = scale16.astype(np.float32)[:, :, None]
    q = np.clip(np.rint((blocks - low) / scale), 0, 15) - 8
    offsets = (blocks - q * scale).mean(axis=2)
    return q.astype(np.int8).reshape(rows, columns), scale16, offsets.astype(np.float32)


def dequantize(
    values: np.ndarray,
    scales: np.ndarray,
    block_size: int | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Float32 weights back from `int8_per_channel` (axis 0) or `int4_blockwise[_asymmetric]`."""
    v = np.asarray(values, dtype=np.float32)
    s = np.asarray(scales, dtype=np.float32)
    if block_size is None:
        return v * s.reshape(-1, *([1] * (v.ndim - 1)))
    rows, columns = v.shape
    blocks = v.reshape(rows, -1, block_size) * s[:, :, None]
    if offsets is not None:
        blocks = blocks + np.asarray(offsets, np.float32)[:, :, None]
    return blocks.reshape(rows, columns)


def _as_float32(weight) -> np.ndarray:
    if hasattr(weight, "detach"):  # a torch tensor, possibly bfloat16
        weight = weight.detach().float().cpu().numpy()
    return np.asarray(weight, dtype=np.float32)


class QuantizedWeight:
    """One weight quantized while the file is written, one tensor in memory at a time.

    The writer asks for the stored values (a `LazyBuffer`) and, for int4, for the block scales
    (a second `LazyBuffer`, produced right after the values). Per-row int8 scales live in the
    flatbuffer: `row_scales` is filled in place when the values are produced, before the
    writer packs the final flatbuffer.
    """

    def __init__(self, produce, shape: tuple[int, ...], part: PartQuant):
        self._produce = produce
        self.shape = tuple(int(d) for d in shape)
        self.part = part
        self.row_scales = np.ones(self.shape[0], np.float32) if part.scheme == "int8" else None
        self._block_scales: np.ndarray | None = None
        # Asymmetric int4: the per-block offsets, stored as int8 rows with their own scales.
        self.offset_scales = np.ones(self.shape[0], np.float32) if part.zero_points else None
        self._offsets: np.ndarray | None = None

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _values(self) -> np.ndarray:
        from genapi.export.tflite_writer import pack_int4

        w = _as_float32(self._produce()).reshape(self.shape[0], -1)
        rows, columns = w.shape
        scheme = self.part.scheme
        if scheme == "fp16":
            return w.astype(np.float16).reshape(self.shape)
        # Rows are independent: quantize a band of rows at a time, so the float temporaries
        # stay small next to the weight itself (a 49152 x 576 embedding is 113 MB in fp32).
        step = max(1, _CHUNK_ELEMENTS // max(columns, 1))
        bands = [slice(r, min(r + step, rows)) for r in range(0, rows, step)]
        if scheme == "int8":
            q = np.empty((rows, columns), np.int8)
            for band in bands:
                q[band], self.row_scales[band] = int8_per_channel(w[band], axis=0)
            return q.reshape(self.shape)
        blocks = columns // self.part.block_size
        packed = np.empty((rows * columns + 1) // 2, np.uint8)
        scales = np.empty((rows, blocks), np.float16)
        offsets = np.empty((rows, blocks), np.float32) if self.part.zero_points else None
        # Packing two values per byte needs an even count per band: even row counts, or any
        # rows when the columns are even (they are: block sizes are even).
        for band in bands:
            if self.part.zero_points:
                q, scales[band], offsets[band] = int4_blockwise_asymmetric(
                    w[band], self.part.block_size
                )
            else:
                q, scales[band] = int4_blockwise(w[band], self.part.block_size)
            packed[band.start * columns // 2 : band.stop * columns // 2] = pack_int4(q)
        self._block_scales, self._offsets = scales, offsets
        return packed

    @property
    def blocks(self) -> tuple[int, int]:
        """Shape of the per-block scales and offsets: [rows, columns / block_size]."""
        return self.shape[0], self.numel // self.shape[0] // self.part.block_size

    def lazy_offsets(self):
        """The per-block offsets as int8 rows (scales in `offset_scales`), after the values."""
        from genapi.export.tflite_writer import LazyBuffer

        def produce() -> np.ndarray:
            if self._offsets is None:
                self._values()
            offsets, self._offsets = self._offsets, None
            q, scales = int8_per_channel(offsets, axis=0)
            self.offset_scales[:] = scales
            return q

        rows, blocks = self.blocks
        return LazyBuffer(nbytes=rows * blocks, dtype=np.int8, produce=produce, shape=self.blocks)

    def lazy_values(self):
        from genapi.export.tflite_writer import LazyBuffer

        scheme = self.part.scheme
        if scheme == "fp16":
            nbytes, dtype = 2 * self.numel, np.float16
        elif scheme == "int8":
            nbytes, dtype = self.numel, np.int8
        else:
            nbytes, dtype = (self.numel + 1) // 2, np.uint8
        return LazyBuffer(nbytes=nbytes, dtype=dtype, produce=self._values, shape=self.shape)

    def lazy_block_scales(self):
        from genapi.export.tflite_writer import LazyBuffer

        blocks = self.blocks

        def produce() -> np.ndarray:
            if self._block_scales is None:  # values not produced first: compute again
                self._values()
            scales, self._block_scales = self._block_scales, None
            return scales

        return LazyBuffer(
            nbytes=2 * blocks[0] * blocks[1], dtype=np.float16, produce=produce, shape=blocks
        )


def _part_of_parameter(name: str) -> str | None:
    if name == "embedding.weight":
        return "embedding"
    if name == "lm_head.weight":
        return "head"
    if name.endswith(".weight") and (".attention." in name or ".feed_forward." in name):
        if "_norm" in name:
            return None
        return "attention" if ".attention." in name else "feed_forward"
    return None


def stored_weight(weight: np.ndarray, part: PartQuant) -> np.ndarray:
    """The float32 weights a runtime computes with after `part` stored `weight`."""
    w = _as_float32(weight)
    part = fit_block_size(part, w.shape)
    if part.scheme == "none":
        return w
    if part.scheme == "fp16":
        return w.astype(np.float16).astype(np.float32)
    if part.scheme == "int8":
        return dequantize(*int8_per_channel(w, axis=0))
    if not part.zero_points:
        q, scales = int4_blockwise(w, part.block_size)
        return dequantize(q, scales, part.block_size)
    q, scales, offsets = int4_blockwise_asymmetric(w, part.block_size)
    q8, offset_scales = int8_per_channel(offsets, axis=0)
    return dequantize(q, scales, part.block_size, dequantize(q8, offset_scales))


def simulate(model, quant: QuantRecipe | str):
    """Put into `model` (in place) the weights a file converted with `quant` stores.

    Only the weights change; dynamic recipes also quantize activations at run time, which
    this does not model. A tied embedding and head follow the embedding's scheme.

    Returns:
        `model`.
    """
    import torch

    quant = recipe(quant) if isinstance(quant, str) else quant
    with torch.no_grad():
        for name, param in model.named_parameters():
            part = _part_of_parameter(name)
            if part is None or param.ndim != 2:
                continue
            stored = stored_weight(param.detach(), quant.part(part))
            param.copy_(torch.from_numpy(stored).to(param.dtype))
    return model
