"""Memory traffic and arithmetic of the attention algorithms: counted op by op, or from the tiles.

An algorithm made of PyTorch operators moves its tensors through main memory between operators:
each reads its inputs and writes its outputs, and when the tensors are much larger than the
caches (the band of scores is 403 MB at L = 16384, H = 12, w = 256 in float32) nothing is kept on
chip from one operator to the next. :func:`count_traffic` runs a function under a dispatch mode
and records, for every operator, the bytes it touches: each distinct byte of each input read
once, each output written once, views (which move nothing) left out, and the floating-point
operations of its matrix products (2 m n k; the exponentials and sums of a softmax are not
counted, as is usual for attention). On meta tensors it records the shapes without doing the
arithmetic, so the traffic of L = 65536 costs nothing to count.

A fused kernel keeps the scores on chip: :func:`fused_traffic` counts what the tiled algorithm
of the "triton" backend reads and writes, from the same tile classification the kernel uses
(:func:`~swa_tutorial.core.tiling.key_tile_span`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Operators that write their destination without reading it first.
_OVERWRITE = {"aten.copy_.default", "aten.fill_.Scalar", "aten.zero_.default"}


class OpTraffic(NamedTuple):
    """One operator call: its name, the bytes it read and wrote, and its product FLOPs."""

    op: str
    read: int
    written: int
    flops: int


def touched_bytes(x: torch.Tensor) -> int:
    """The distinct bytes a tensor's elements occupy: numel x itemsize, fewer for a view whose
    elements overlap or repeat (an expanded or overlapping chunk view), counted by its span."""
    if x.numel() == 0:
        return 0
    span = 1 + sum((n - 1) * abs(s) for n, s in zip(x.shape, x.stride()))
    return min(x.numel(), span) * x.element_size()


# Matrix products: where their two factors a [..., m, k] and b [..., k, n] are among the inputs.
_PRODUCTS = {"aten.mm.default": 0, "aten.bmm.default": 0, "aten.addmm.default": 1, "aten.baddbmm.default": 1}


def product_flops(op: str, inputs: list[torch.Tensor]) -> int:
    """2 m n k (times the batch) for a matrix product, 0 for any other operator."""
    if op not in _PRODUCTS:
        return 0
    a, b = inputs[_PRODUCTS[op] : _PRODUCTS[op] + 2]
    return 2 * a.numel() * b.shape[-1]


def _storage(x: torch.Tensor) -> int:
    """An identity of the memory a tensor lives in (shared by its views; meta tensors too)."""
    return x.untyped_storage()._cdata


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[OpTraffic] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = str(func)
        inputs, destinations, updated = [], [], []  # written: in place (updated: read first) or out=
        schema = func._schema.arguments
        named = {a.name: a for a in schema}
        for schema_arg, arg in [*zip(schema, args), *((named[k], v) for k, v in kwargs.items())]:
            tensors = [t for t in tree_flatten(arg)[0] if isinstance(t, torch.Tensor)]
            if schema_arg.alias_info is None or not schema_arg.alias_info.is_write:
                inputs += tensors
            else:
                destinations += tensors
                if not schema_arg.kwarg_only and name not in _OVERWRITE:  # an out= argument is not read
                    updated += tensors
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not destinations and {_storage(t) for t in outputs} <= {_storage(t) for t in inputs}:
            return out  # a view (or an alias): no byte moves
        if "empty" in name:
            return out  # memory allocated, nothing read or written yet
        read = sum(map(touched_bytes, inputs + updated))
        written = sum(map(touched_bytes, destinations or outputs))
        self.ops.append(OpTraffic(name, read, written, product_flops(name, inputs)))
        return out


def count_traffic(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), ops)``: the result and the :class:`OpTraffic` of every operator called.

    Works on meta tensors (shapes only) as on real ones. Autograd's backward runs outside the
    mode: count a backward by calling it inside ``fn``.
    """
    recorder = _Recorder()
    with recorder:
        result = fn(*args, **kwargs)
    return result, recorder.ops


class TileWork(NamedTuple):
    """What one head's tiled pass over L queries does (see :func:`tile_work`)."""

    full: int  # key tiles visited without a mask, over all query tiles
    partial: int  # key tiles visited with a mask
    skipped: int  # key tiles never loaded
    keys_loaded: int  # key (and value) rows loaded, summed over query tiles
    cells: int  # (query, key) cells scored: real queries x loaded keys


def tile_work(seq_len: int, window, block_rows: int, block_cols: int) -> TileWork:
    """The key tiles each query tile of ``block_rows`` queries visits, from the kernel's own
    classification :func:`~swa_tutorial.core.tiling.key_tile_span`; window (left, right)."""
    # Imported here, not at the top: count_traffic loads from this file alone, beside the package
    # of an older commit (tools/traffic_history.py), which may have no core.tiling.
    from swa_tutorial.core.tiling import key_tile_span

    left, right = window
    row_tiles, col_tiles = -(-seq_len // block_rows), -(-seq_len // block_cols)
    full = partial = keys = cells = 0
    for r in range(row_tiles):
        start, full_start, full_end, end = key_tile_span(r, seq_len, left, right, block_rows, block_cols)
        full += full_end - full_start
        partial += (end - start) - (full_end - full_start)
        loaded = min(end * block_cols, seq_len) - start * block_cols
        keys += loaded
        cells += loaded * (min((r + 1) * block_rows, seq_len) - r * block_rows)
    return TileWork(full, partial, row_tiles * col_tiles - full - partial, keys, cells)


def fused_traffic(batch: int, heads: int, seq_len: int, window, head_dim: int, value_dim: int,
                  itemsize: int, block_rows: int, block_cols: int, lse_itemsize: int = 4) -> dict:
    """Bytes a fused forward moves through main memory, in two models.

    ``tiles``: each query tile reads its q rows once and the k and v rows of every key tile it
    visits (a key read again by each query tile whose window reaches it: no reuse between
    programs), and writes its out rows and its lse; ``once``: q, k, v read once, out and lse
    written once (perfect reuse, the least any algorithm moves). Sizes as in [B, L, H, d];
    ``itemsize``: bytes of an element of q, k, v and out; ``lse_itemsize``: of lse (float32).
    """
    work = tile_work(seq_len, window, block_rows, block_cols)
    per_head_once = seq_len * (2 * head_dim + 2 * value_dim) * itemsize + seq_len * lse_itemsize
    per_head_tiles = (seq_len * (head_dim + value_dim) + work.keys_loaded * (head_dim + value_dim)) * itemsize
    per_head_tiles += seq_len * lse_itemsize
    return {"tiles": batch * heads * per_head_tiles, "once": batch * heads * per_head_once}
