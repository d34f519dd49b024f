"""Tiles: which keys a block of queries must score. Pure index arithmetic, no tensor math.

Two tilings serve the package's fused paths. The PyTorch tiles (:func:`tile_groups`) give each
query tile one contiguous span of keys, the keys its queries may see. The Triton kernel
(:func:`key_tile_span`) walks key tiles of a fixed size and sorts them into skipped, full and
partial tiles, so that full tiles need no mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class TileGroup:
    """``tiles`` consecutive query tiles of ``rows`` queries each, the first at ``first_query``.

    Tile t scores the ``span`` keys from ``first_key + t * key_step``: ``key_step`` = ``rows``
    where the span slides with its tile, 0 where every tile of the group sees the same span (a
    window as wide as the sequence, where every span is the whole of it).
    """

    first_query: int
    tiles: int
    rows: int
    first_key: int
    key_step: int
    span: int

    @property
    def queries(self) -> slice:
        """The slice of the group's queries, tiles x rows of them."""
        return slice(self.first_query, self.first_query + self.tiles * self.rows)

    @property
    def keys(self) -> slice:
        """Every key some tile of the group scores."""
        return slice(self.first_key, self.first_key + (self.tiles - 1) * self.key_step + self.span)


def tile_groups(seq_len: int, window: tuple[int, int], tile_rows: int, group_cells: int) -> list[TileGroup]:
    """Split L queries into tiles of ``tile_rows`` (b) and the tiles into groups.

    A tile of n queries from i0 scores exactly the keys they may see:
    max(i0 - left, 0) .. min(i0 + n - 1 + right, L - 1), a span of at most b + left + right
    keys; near either end of the sequence it is cut there, so a tile never scores a key that
    none of its queries reaches. Consecutive tiles whose spans have one size and either slide
    with their tiles or stay in place form a group of at most max(1, group_cells // (b span))
    tiles, scored in one batched product. A last, shorter tile (L not a multiple of b) is a
    group of its own.
    """
    left, right = window
    rows = min(tile_rows, seq_len)
    groups: list[TileGroup] = []
    for first_query in range(0, seq_len, rows):
        n = min(rows, seq_len - first_query)
        first_key = max(first_query - left, 0)
        span = min(first_query + n + right, seq_len) - first_key
        if groups:
            last = groups[-1]
            step = first_key - last.first_key if last.tiles == 1 else last.key_step
            joins = (n == last.rows and span == last.span and step in (0, rows)
                     and first_key == last.first_key + last.tiles * step
                     and last.tiles < max(1, group_cells // (rows * span)))
            if joins:
                groups[-1] = replace(last, tiles=last.tiles + 1, key_step=step)
                continue
        groups.append(TileGroup(first_query, 1, n, first_key, 0, span))
    return groups


def key_tile_span(row_tile: int, seq_len: int, left: int, right: int, block_rows: int, block_cols: int):
    """The column tiles one row tile visits: ``(start, full_start, full_end, end)``.

    Row i may see column j iff i - left <= j <= i + right and 0 <= j < seq_len. The rows of tile
    ``row_tile`` are ``row_tile * block_rows`` up to ``block_rows`` more, those below ``seq_len``
    being real. Column tile c holds columns ``c * block_cols .. (c + 1) * block_cols - 1``.

    * tiles ``start .. end - 1`` are visited, and each holds at least one pair (real row,
      column) that may see each other: the rest are skipped;
    * tiles ``full_start .. full_end - 1`` are full: every real row sees every one of their columns
      (all below seq_len), so no mask is needed; the others visited are partial.

    ``start <= full_start <= full_end <= end``. In the forward and the dQ pass rows are queries and
    columns keys. In the dK/dV pass rows are keys and columns queries: key j is seen by queries
    j - right .. j + left, so that pass calls this with ``left`` and ``right`` swapped.
    """
    first_row = row_tile * block_rows
    last_row = min(first_row + block_rows, seq_len) - 1
    start = max(0, first_row - left) // block_cols
    end = min(seq_len - 1, last_row + right) // block_cols + 1
    # full: c * block_cols >= last_row - left and (c + 1) * block_cols - 1 <= min(first_row + right, seq_len - 1)
    first_full = -((left - last_row) // block_cols)  # ceil((last_row - left) / block_cols)
    end_full = min(first_row + right + 1, seq_len) // block_cols
    full_start = min(max(first_full, start), end)
    full_end = max(min(end_full, end), full_start)
    return start, full_start, full_end, end


@functools.lru_cache(maxsize=64)
def span_table(seq_len: int, left: int, right: int, block_rows: int, block_cols: int, device: torch.device):
    """:func:`key_tile_span` of every row tile: int32 [ceil(seq_len / block_rows), 4] on ``device``.

    The kernels read their loop bounds from it. Cached: it depends only on its arguments.
    """
    rows = -(-seq_len // block_rows)
    spans = [key_tile_span(r, seq_len, left, right, block_rows, block_cols) for r in range(rows)]
    return torch.tensor(spans, dtype=torch.int32, device=device)
