"""Calibrated quantization: weights that lose less accuracy in the same stored format.

Two offline steps, both run once in PyTorch over a short calibration text before the file is
written, and both free at run time (the file has the same ops and sizes as without them):

- **Smoothing** (for dynamic recipes, whose hybrid kernels quantize each token's activations
  to int8 at run time): input channels with large activations are scaled down and the weights
  that read them scaled up by the same factors, `s_j = max|x_j|^alpha / max|w_j|^(1-alpha)`.
  The factors are folded into the preceding weights (the RMSNorm weights before the q/k/v and
  gate/up projections, the v_proj rows before o_proj, the up_proj rows before down_proj), so
  the float model computes the same function; only where the rounding happens changes.
- **Error-compensating rounding** (GPTQ-style): each quantized linear weight is rounded one
  input column at a time, and the rounding error of each column is pushed onto the columns not
  yet rounded in the direction that least changes the layer's output on the calibration
  inputs (through the inverse of their second-moment matrix `H = X^T X`, dampened). The grid
  is the one round-to-nearest would use (int8 row scales, int4 block scales and offsets); only
  which grid point each weight takes changes. Layers are calibrated in order, each on the
  outputs of the already-calibrated layers before it.

The result is a set of float weights that lie exactly on the grid the writer picks for them:
`genapi.export.quantize` quantizes them again while writing and gets back exactly the
calibrated integers (checked here for every row; a row that would not is stored as plain
round-to-nearest). Calibration needs the real weights: it loads the model into memory.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from genapi.export.quantize import (
    PartQuant,
    QuantRecipe,
    dequantize,
    fit_block_size,
    int4_blockwise_asymmetric,
    int8_per_channel,
)
from genapi.layers.norm import RMSNorm

logger = logging.getLogger(__name__)


def default_text() -> str:
    """The project's calibration text (about 800 words of plain English prose, written for
    the project and separate from the evaluation text)."""
    path = resources.files("genapi").joinpath("data/calibration_prose.txt")
    return path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class CalibrationOptions:
    """How to calibrate.

    smooth_alpha: migration strength of smoothing, in [0, 1]; None: no smoothing. Applied
        only to dynamic int8 parts (weight-only parts compute with float activations; int4
        blocks are too coarse to take the activations' range).
    gptq: error-compensating rounding of the int8 and int4 linear weights (and of the output
        head, or of a tied embedding table when it shares the head's format).
    damp: dampening added to the diagonal of H, as a share of its mean diagonal.
    act_order: round the columns with the largest activations first.
    """

    smooth_alpha: float | None = 0.5
    gptq: bool = True
    damp: float = 0.01
    act_order: bool = True


# -- rounding -------------------------------------------------------------------------------

# Elements of the output head rounded at once.
_HEAD_BAND_ELEMENTS = 1 << 23


@dataclass
class _Grid:
    """A fixed quantization grid for a `[rows, columns]` weight: per element, a step and an
    offset (`value = level * step + offset`), levels in [low, high], and the levels some
    elements must keep so that round-to-nearest of the result picks this same grid again.
    Stored column-major (`[groups, rows]`, `[columns, rows]`): rounding goes column by column."""

    step: torch.Tensor  # [groups, rows]
    offset: torch.Tensor | None  # [groups, rows]
    group: int  # columns per group
    low: int
    high: int
    pinned: torch.Tensor  # [columns, rows] bool
    pinned_level: torch.Tensor  # [columns, rows], used where pinned

    def round(self, column: int, w: torch.Tensor) -> torch.Tensor:
        """The grid value nearest to (or pinned for) column `column`'s weights `w` [rows]."""
        g = column // self.group
        step = self.step[g]
        x = w if self.offset is None else w - self.offset[g]
        q = torch.clamp(torch.round(x / step), self.low, self.high)
        q = torch.where(self.pinned[column], self.pinned_level[column], q)
        v = q * step
        return v if self.offset is None else v + self.offset[g]


def _columns(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.T))


def _int8_grid(w: np.ndarray) -> _Grid:
    q, scales = int8_per_channel(w, axis=0)
    rows = np.arange(w.shape[0])
    pinned = np.zeros(w.shape, bool)
    pinned[rows, np.abs(w).argmax(axis=1)] = True  # the element that sets the row's scale
    return _Grid(
        step=_columns(scales[:, None].astype(np.float32)),
        offset=None,
        group=w.shape[1],
        low=-127,
        high=127,
        pinned=_columns(pinned),
        pinned_level=_columns(q.astype(np.float32)),
    )


def _int4_grid(w: np.ndarray, block_size: int) -> _Grid:
    q, scales, offsets = int4_blockwise_asymmetric(w, block_size)
    # The stored offsets are int8 rows: use the values the file holds.
    offsets = dequantize(*int8_per_channel(offsets, axis=0))
    rows, columns = w.shape
    blocks = w.reshape(rows, -1, block_size)
    pinned = np.zeros(blocks.shape, bool)
    r, b = np.meshgrid(np.arange(rows), np.arange(blocks.shape[1]), indexing="ij")
    # Each block keeps its lowest and highest element at the end levels: round-to-nearest of
    # the result then finds the same range, hence the same scale.
    pinned[r, b, blocks.argmin(axis=2)] = True
    pinned[r, b, blocks.argmax(axis=2)] = True
    return _Grid(
        step=_columns(scales.astype(np.float32)),
        offset=_columns(offsets.astype(np.float32)),
        group=block_size,
        low=-8,
        high=7,
        pinned=_columns(pinned.reshape(rows, columns)),
        pinned_level=_columns(q.astype(np.float32)),
    )


def _grid(w: np.ndarray, part: PartQuant) -> _Grid | None:
    part = fit_block_size(part, w.shape)
    if part.scheme == "int8":
        return _int8_grid(w)
    if part.scheme == "int4" and part.zero_points:
        return _int4_grid(w, part.block_size)
    return None


def inverse_factor(
    hessian: torch.Tensor, *, damp: float = 0.01, act_order: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounding order and the upper Cholesky factor of the dampened, reordered H^-1 for
    inputs with second moments `hessian`; linears that read the same input share them."""
    h = hessian.detach().to(torch.float64).clone()
    columns = h.shape[0]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    order = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(columns)
    h = h[order][:, order]
    h += torch.eye(columns, dtype=h.dtype) * damp * torch.diag(h).mean()
    # Upper Cholesky factor of H^-1: row i holds how column i's error spreads over i, i+1, ...
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    return order, u.to(torch.float32)


def gptq_round(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    grid: _Grid,
    *,
    damp: float = 0.01,
    act_order: bool = True,
    band: int = 64,
    factor: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Round `weight` [rows, columns] onto `grid`, compensating each column's error on the
    columns after it (GPTQ), for inputs with second moments `hessian` [columns, columns]
    (or their `inverse_factor`, given as `factor`).

    Returns:
        The rounded weight (float32, every element on the grid).
    """
    order, u = factor or inverse_factor(hessian, damp=damp, act_order=act_order)
    columns = u.shape[0]
    # Column-major, in rounding order: column i is the contiguous row wt[i].
    wt = weight.detach().to(torch.float32).T[order].contiguous()
    out = torch.empty_like(wt)
    for start in range(0, columns, band):
        stop = min(start + band, columns)
        errors = torch.empty(stop - start, wt.shape[1], dtype=wt.dtype)
        for i in range(start, stop):
            values = grid.round(int(order[i]), wt[i])
            out[i] = values
            err = (wt[i] - values) / u[i, i]
            if i + 1 < stop:
                wt[i + 1 : stop].sub_(u[i, i + 1 : stop, None] * err[None, :])
            errors[i - start] = err
        if stop < columns:
            wt[stop:].sub_(u[start:stop, stop:].T @ errors)
    result = torch.empty_like(out)
    result[order] = out
    return result.T.contiguous()


def _consistent(rounded: np.ndarray, original: np.ndarray, part: PartQuant) -> np.ndarray:
    """`rounded` with any row that round-to-nearest would not store as it is replaced by the
    round-to-nearest of `original` (expected: none)."""
    from genapi.export.quantize import stored_weight

    again = stored_weight(rounded, part)
    bad = ~np.all(np.abs(again - rounded) <= 1e-6 * np.abs(rounded).max(axis=1, keepdims=True), 1)
    if bad.any():
        logger.warning("%d rows left their calibration grid; stored as round-to-nearest", bad.sum())
        rounded = rounded.copy()
        rounded[bad] = stored_weight(original[bad], part)
    return rounded


# -- statistics -----------------------------------------------------------------------------


class _Inputs:
    """Accumulates X^T X and per-channel max |x| of the inputs a hook sees."""

    def __init__(self, act_quant: bool = False):
        self.h: torch.Tensor | None = None
        self.absmax: torch.Tensor | None = None
        self.count = 0

    def __call__(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        if self.h is None:
            self.h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            self.absmax = torch.zeros(x.shape[1], dtype=torch.float64)
        self.h += x.T @ x
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        self.count += x.shape[0]


def _linears(block) -> dict[str, torch.nn.Linear]:
    return {
        name: module
        for name, module in block.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def _record(modules: dict[str, torch.nn.Module]):
    stats = {name: _Inputs() for name in modules}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, s=stats[name]: s(args[0]))
        for name, m in modules.items()
    ]
    return stats, handles


# -- smoothing ------------------------------------------------------------------------------


def _smoothing_factors(absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float):
    w_max = torch.stack([w.detach().abs().amax(0) for w in weights]).amax(0).to(torch.float64)
    a = absmax.clamp(min=1e-5)
    s = a.pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-4).to(torch.float32)


def _smooth_block(block, stats: dict[str, _Inputs], alpha: float, parts: set[str]) -> None:
    """Fold smoothing factors into one decoder block, in place (the function is unchanged)."""
    attn, ff = block.attention, block.feed_forward
    cfg = block.config
    with torch.no_grad():
        if "attention" in parts and cfg.residual == "sequential":
            norm = block.pre_attention_norm
            if isinstance(norm, RMSNorm) and not norm.zero_centered:
                projections = [attn.q_proj, attn.k_proj, attn.v_proj]
                s = _smoothing_factors(
                    stats["attention.q_proj"].absmax, [p.weight for p in projections], alpha
                )
                norm.weight.div_(s)
                for p in projections:
                    p.weight.mul_(s)
            if attn.v_proj.bias is None:
                # o_proj reads head n's output from kv group n // (heads / groups): one factor
                # per v_proj row, repeated over the query heads of its group.
                ac = attn.config
                g, d, r = ac.num_kv_heads, ac.head_dim, ac.num_heads // ac.num_kv_heads
                per_input = stats["attention.o_proj"].absmax.view(g, r, d).amax(1)
                w_max = attn.o_proj.weight.detach().abs().amax(0).view(g, r, d).amax(1)
                s = _smoothing_factors(per_input.reshape(-1), [w_max.reshape(1, -1)], alpha)
                attn.v_proj.weight.div_(s[:, None])
                attn.o_proj.weight.mul_(s.view(g, 1, d).expand(g, r, d).reshape(-1))
        if "feed_forward" in parts and getattr(ff, "gated", False) and ff.up_proj.bias is None:
            norm = block.pre_feed_forward_norm
            if (
                norm is not None
                and isinstance(norm, RMSNorm)
                and not norm.zero_centered
                and cfg.residual == "sequential"
            ):
                projections = [ff.gate_proj, ff.up_proj]
                s = _smoothing_factors(
                    stats["feed_forward.gate_proj"].absmax, [p.weight for p in projections], alpha
                )
                norm.weight.div_(s)
                for p in projections:
                    p.weight.mul_(s)
            s = _smoothing_factors(
                stats["feed_forward.down_proj"].absmax, [ff.down_proj.weight], alpha
            )
            ff.up_proj.weight.div_(s[:, None])
            ff.down_proj.weight.mul_(s)


# -- the whole model ------------------------------------------------------------------------


def _smooths(part: PartQuant) -> bool:
    """Whether smoothing pays for `part`: int8 rows with int8 activations (the hybrid kernels).
    Int4 blocks have 16 levels: moving activation range into them costs more in the weights
    than it saves in the activations (on SmolLM2 it turned Q4_1 blocks, which int4 blocks
    with offsets hold almost exactly, into blocks that lose precision)."""
    return part.dynamic and part.scheme == "int8"


def _part_quant(quant: QuantRecipe, name: str) -> PartQuant:
    return quant.part("attention" if ".attention." in name else "feed_forward")


def calibrate(
    model,
    quant: QuantRecipe,
    ids,
    options: CalibrationOptions = CalibrationOptions(),  # noqa: B008
) -> dict[str, torch.Tensor]:
    """Calibrated float32 weights for converting `model` with `quant`.

    Args:
        model: a genapi `DecoderLM` with real weights (not changed).
        quant: the recipe the file will be written with.
        ids: calibration token ids (e.g. from `genapi.evaluation.text_ids(tokenizer,
            default_text())`); a few hundred to a few thousand.
        options: what to do.

    Returns:
        genapi parameter name -> float32 tensor, for every parameter: pass it as `weights=`
        to `genapi.export_llm` with the same recipe.
    """
    model = copy.deepcopy(model).float().eval()
    _calibrate_in_place(model, quant, ids, options)
    # The copy is this function's own: its parameters can be handed out as they are.
    return {name: p.detach() for name, p in model.named_parameters()}


def _calibrate_in_place(model, quant: QuantRecipe, ids, options: CalibrationOptions) -> None:
    """`calibrate` on a float32 `model` in eval mode, changing its weights."""
    tokens = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad():
        x = model.embed(tokens)
        b, t, _ = x.shape
        from genapi.layers import KVCache

        cache = KVCache.empty(model.config, cache_len=t, batch=b, dtype=x.dtype)
        input_pos = torch.arange(t)
        context = model.attention_context(input_pos, cache.cache_len)

        def run(i, block, x):
            return model.run_block(i, x, input_pos=input_pos, context=context, kv_cache=cache)[0]

        for i, block in enumerate(model.blocks):
            linears = _linears(block)
            smoothed = {p for p in ("attention", "feed_forward") if _smooths(quant.part(p))}
            if options.smooth_alpha is not None and smoothed:
                stats, handles = _record(linears)
                run(i, block, x)
                for h in handles:
                    h.remove()
                _smooth_block(block, stats, options.smooth_alpha, smoothed)
            if options.gptq:
                stats, handles = _record(linears)
                run(i, block, x)
                for h in handles:
                    h.remove()
                factors: list[tuple[torch.Tensor, tuple]] = []  # (H, its factor)
                for name, module in linears.items():
                    part = _part_quant(quant, f".{name}")
                    w = module.weight.detach().numpy()
                    grid = _grid(w, part)
                    if grid is None:
                        continue
                    h = stats[name].h
                    # q/k/v (and gate/up) read the same input: one factorization serves them.
                    factor = next((f for seen, f in factors if torch.equal(seen, h)), None)
                    if factor is None:
                        factor = inverse_factor(h, damp=options.damp, act_order=options.act_order)
                        factors.append((h, factor))
                    rounded = gptq_round(module.weight, h, grid, factor=factor).numpy()
                    module.weight.copy_(torch.from_numpy(_consistent(rounded, w, part)))
            x = run(i, block, x)
        if options.gptq:
            _calibrate_head(model, quant, model.final_norm(x), options)


def calibrated_weights(
    model,
    quant: QuantRecipe,
    ids,
    *,
    weights=None,
    options: CalibrationOptions | None = None,
) -> dict[str, torch.Tensor]:
    """`calibrate` for `genapi.export_llm`: loads a model on the meta device from `weights`
    (genapi parameter name -> tensor, e.g. `genapi.model_weights(checkpoint)`) first.

    Returns:
        The calibrated float32 weights of every parameter.
    """
    from genapi.models import build_model

    options = options or CalibrationOptions()
    on_meta = next(model.parameters()).device.type == "meta"
    if not on_meta and weights is None:
        logger.info("calibrating %s for %s over %d tokens", model.config.name, quant.name, len(ids))
        return calibrate(model, quant, ids, options)
    real = build_model(model.config)
    names = dict(real.named_parameters())
    with torch.no_grad():
        for name, param in names.items():
            source = weights if weights is not None and name in weights else None
            if source is None:
                if on_meta:
                    raise ValueError(f"no weight for {name!r} to calibrate with")
                source = dict(model.named_parameters())
            param.copy_(source[name].detach().to(torch.float32))
    real.reset_buffers(device="cpu")
    # The model built here is nobody else's: calibrate it in place instead of in a copy.
    logger.info("calibrating %s for %s over %d tokens", real.config.name, quant.name, len(ids))
    _calibrate_in_place(real.float().eval(), quant, ids, options)
    return {name: p.detach() for name, p in real.named_parameters()}


def _calibrate_head(model, quant: QuantRecipe, x: torch.Tensor, options) -> None:
    head = quant.part("head")
    if model.config.tie_embeddings:
        if quant.part("embedding") != head:
            return  # the table is stored twice; its lookup copy is left as it is
        weight = model.embedding.weight
    else:
        weight = model.lm_head.weight
    w = weight.detach().numpy()
    if _grid(w[:1], head) is None:
        return
    stats = _Inputs()
    stats(x)
    factor = inverse_factor(stats.h, damp=options.damp, act_order=options.act_order)
    # Rows round independently: a band at a time keeps the temporaries of a large vocabulary
    # (Gemma 3: 262144 x 640) to a few tens of MB instead of several copies of the table.
    step = max(1, _HEAD_BAND_ELEMENTS // w.shape[1])
    for start in range(0, w.shape[0], step):
        band = w[start : start + step]
        rounded = gptq_round(
            torch.from_numpy(band), stats.h, _grid(band, head), factor=factor
        ).numpy()
        weight[start : start + step].copy_(torch.from_numpy(_consistent(rounded, band, head)))


__all__ = [
    "CalibrationOptions",
    "calibrate",
    "calibrated_weights",
    "default_text",
    "gptq_round",
    "inverse_factor",
]
