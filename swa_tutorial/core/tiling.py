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

    The n queries of a tile from i0 may see keys max(i0 - left, 0) .. min(i0 + n - 1 + right,
    L - 1): at most ``full`` = min(b + left + right, L) of them, fewer near either end of the
    sequence. Consecutive tiles form a group, scored in one batched product, while its cells
    (tiles x b x span) stay within ``group_cells`` (a group of one tile may hold more):

    * sliding: spans of one size, each ``b`` keys on from the last (``key_step`` = b);
    * shared: one span for every tile of the group (``key_step`` = 0), the union of their keys,
      at most ``full`` keys. Near the ends that joins tiles whose spans the sequence cuts.

    So a tile's span holds every key its queries may see and never more than ``full`` keys, and
    a tile alone in its group (the causal window (4095, 0) with several heads per key/value head,
    say) scores exactly its queries' keys. A last, shorter tile (L not a multiple of b) is a
    group of its own.
    """
    left, right = window
    rows = min(tile_rows, seq_len)
    full = min(rows + left + right, seq_len)
    groups: list[TileGroup] = []
    for first_query in range(0, seq_len, rows):
        n = min(rows, seq_len - first_query)
        first_key = max(first_query - left, 0)
        end_key = min(first_query + n + right, seq_len)
        # only full tiles join (a short one is last)
        joined = _joined(groups[-1], first_key, end_key, full, group_cells) if groups and n == rows else None
        if joined:
            groups[-1] = joined
        else:
            groups.append(TileGroup(first_query, 1, n, first_key, 0, end_key - first_key))
    return groups


def _joined(group: TileGroup, first_key: int, end_key: int, full: int, group_cells: int) -> TileGroup | None:
    """``group`` with one more tile, whose keys are first_key .. end_key - 1, sliding if it can
    and else sharing a span of at most ``full`` keys; None if neither fits in ``group_cells``."""
    tiles = group.tiles + 1
    if ((group.tiles == 1 or group.key_step == group.rows) and end_key - first_key == group.span
            and first_key == group.first_key + group.tiles * group.rows):
        grown = replace(group, tiles=tiles, key_step=group.rows)
    elif group.key_step == 0:
        start = min(group.first_key, first_key)
        grown = replace(group, tiles=tiles, first_key=start, span=max(group.first_key + group.span, end_key) - start)
    else:
        return None
    return grown if grown.span <= full and tiles * grown.rows * grown.span <= group_cells else None


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
