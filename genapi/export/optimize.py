"""Peephole passes over a lowered subgraph, before its operators are written.

The ATen graph spells out layout changes that TFLite kernels can absorb: `k.transpose(2, 3)`
before a matmul becomes BATCH_MATMUL's `adj_y` flag instead of a TRANSPOSE that copies the
whole KV cache on every step, and chains of RESHAPEs collapse into one. Operators whose
outputs nobody reads are dropped at the end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass
class Op:
    """One operator of the subgraph under construction."""

    op: str
    inputs: list[int]  # tensor indices; -1 for an omitted optional input
    outputs: list[int]
    options: object | None = None
    version: int = 1
    extra: dict = field(default_factory=dict)  # constant inputs' values, e.g. a permutation


def optimize(ops: list[Op], *, shapes: dict[int, tuple], keep: set[int], reshape) -> list[Op]:
    """Rewrite `ops` and drop dead ones.

    Args:
        ops: operators in execution order.
        shapes: tensor index -> shape, for every activation tensor.
        keep: tensor indices that must stay computed (the signature's outputs).
        reshape: callable(source_index, shape) -> (Op, output_index) making a new RESHAPE.

    Returns:
        The operators to write, in execution order.
    """
    ops = _fold_transposes_into_matmul(ops, shapes=shapes, reshape=reshape)
    ops = _transposes_of_unit_dims_to_reshapes(ops, shapes=shapes, reshape=reshape)
    ops = _collapse_reshapes(ops)
    ops = _merge_duplicates(ops, keep)
    return _cache_writes_last(_drop_dead(ops, keep), keep)


def _producers(ops: list[Op]) -> dict[int, Op]:
    return {out: op for op in ops for out in op.outputs}


def _swaps_last_two(perm) -> bool:
    n = len(perm)
    return n >= 2 and list(perm) == [*range(n - 2), n - 1, n - 2]


def _fold_transposes_into_matmul(ops: list[Op], *, shapes, reshape) -> list[Op]:
    """BATCH_MATMUL(a, [RESHAPE](TRANSPOSE_last2(x))) -> BATCH_MATMUL(a, [RESHAPE](x), adj)."""
    producers = _producers(ops)
    result = []
    for op in ops:
        if op.op != "BATCH_MATMUL":
            result.append(op)
            continue
        op = copy.copy(op)
        op.inputs = list(op.inputs)
        op.options = copy.copy(op.options)
        for slot, flag in ((0, "adjX"), (1, "adjY")):
            source = _untransposed(op.inputs[slot], producers, shapes)
            if source is None:
                continue
            x, target_shape = source
            if tuple(shapes[x]) != target_shape:
                new_op, x = reshape(x, target_shape)
                result.append(new_op)
            op.inputs[slot] = x
            setattr(op.options, flag, not getattr(op.options, flag))
        result.append(op)
    return result


def _untransposed(index: int, producers, shapes):
    """(x, shape) such that `index` equals RESHAPE(x, shape) with its last two dims swapped."""
    op = producers.get(index)
    reshaped_to = None
    if op is not None and op.op == "RESHAPE":
        reshaped_to = tuple(shapes[index])
        op = producers.get(op.inputs[0])
    if op is None or op.op != "TRANSPOSE" or not _swaps_last_two(op.extra.get("perm", ())):
        return None
    x = op.inputs[0]
    x_shape = tuple(shapes[x])
    transposed_shape = (*x_shape[:-2], x_shape[-1], x_shape[-2])
    if reshaped_to is None:
        return x, x_shape
    # The RESHAPE may only regroup batch dimensions; the matrix dimensions must stay.
    if reshaped_to[-2:] != transposed_shape[-2:]:
        return None
    return x, (*reshaped_to[:-2], x_shape[-2], x_shape[-1])


def _transposes_of_unit_dims_to_reshapes(ops: list[Op], *, shapes, reshape) -> list[Op]:
    """A TRANSPOSE that only moves size-1 dimensions keeps the data order: make it a RESHAPE.

    With one token per decode step, most transposes around attention are of this kind.
    """
    result = []
    for op in ops:
        perm = op.extra.get("perm")
        if op.op == "TRANSPOSE" and perm is not None:
            shape = shapes[op.inputs[0]]
            moved = [d for d in perm if shape[d] != 1]
            if moved == sorted(moved):
                new_op, out = reshape(op.inputs[0], tuple(shapes[op.outputs[0]]))
                new_op.outputs = list(op.outputs)
                result.append(new_op)
                continue
        result.append(op)
    return result


def _collapse_reshapes(ops: list[Op]) -> list[Op]:
    """RESHAPE(RESHAPE(x)) -> RESHAPE(x); the inner one dies if nothing else reads it."""
    producers = _producers(ops)
    result = []
    for op in ops:
        if op.op == "RESHAPE":
            inner = producers.get(op.inputs[0])
            while inner is not None and inner.op == "RESHAPE":
                op = copy.copy(op)
                op.inputs = [inner.inputs[0], *op.inputs[1:]]
                inner = producers.get(op.inputs[0])
        result.append(op)
    return result


def _options_key(value):
    """A hashable, comparable form of an options object (or any value inside one)."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_options_key(v) for v in value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _options_key(value.tolist())
    return (
        type(value).__name__,
        tuple(sorted((k, _options_key(v)) for k, v in vars(value).items())),
    )


def _merge_duplicates(ops: list[Op], keep: set[int]) -> list[Op]:
    """An op equal to an earlier one (same kind, inputs and options) reuses its outputs.

    Each transformer block is lowered from the same traced program, so it recomputes the
    values that only depend on the signature inputs: the rotary tables reshaped for its heads,
    the cache write position. One copy of each serves every block. Ops producing signature
    outputs are kept as they are.
    """
    renamed: dict[int, int] = {}
    seen: dict[tuple, list[int]] = {}
    result = []
    for op in ops:
        if any(i in renamed for i in op.inputs):
            op = copy.copy(op)
            op.inputs = [renamed.get(i, i) for i in op.inputs]
        if any(out in keep for out in op.outputs):
            result.append(op)
            continue
        key = (op.op, op.version, tuple(op.inputs), _options_key(op.options))
        first = seen.get(key)
        if first is not None and len(first) == len(op.outputs):
            renamed.update(zip(op.outputs, first, strict=True))
            continue
        seen[key] = list(op.outputs)
        result.append(op)
    return result


def _cache_writes_last(ops: list[Op], keep: set[int]) -> list[Op]:
    """Move the cache writes (DYNAMIC_UPDATE_SLICE ops whose output is a signature output and
    read by no other op) after everything else, in their order.

    XNNPACK does not take DYNAMIC_UPDATE_SLICE; written between blocks, each write would cut
    the delegated graph into one partition per block, each with its own workspace (about
    0.7 MiB per block on SmolLM2 at prefill 128). Attention reads the cache as it was, so the
    writes can all wait: the runtime then delegates the blocks as one partition. Running a
    write after every read of its cache is also what makes binding one buffer as a cache's
    input and output safe.
    """
    read = {i for op in ops for i in op.inputs}
    last = [
        op
        for op in ops
        if op.op == "DYNAMIC_UPDATE_SLICE" and op.outputs[0] in keep and op.outputs[0] not in read
    ]
    moved = {id(op) for op in last}
    return [op for op in ops if id(op) not in moved] + last


def _drop_dead(ops: list[Op], keep: set[int]) -> list[Op]:
    live = set(keep)
    kept = []
    for op in reversed(ops):
        if any(out in live for out in op.outputs):
            kept.append(op)
            live.update(i for i in op.inputs if i >= 0)
    return list(reversed(kept))
