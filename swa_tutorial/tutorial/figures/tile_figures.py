"""Pictures of the tiled algorithm: query tiles against their key tiles over the scores S.

The kinds of tile are the kernel's own (:func:`~swa_tutorial.core.tiling.key_tile_span`):
a key tile is *full* (every query of the tile sees every key: no mask), *partial* (masked cell by
cell) or *skipped* (never loaded). :func:`tile_kinds` reads them from the kernel's spans and
:func:`draw_tiles` colours S with them. Tokens are numbered from 1, as in the labelled example.
"""

from __future__ import annotations

from swa_tutorial.core.optional import require

require("matplotlib", "numpy", by=__name__, extra="plot")

import matplotlib.patches as mpatches
import numpy as np

from swa_tutorial.core.tiling import key_tile_span
from swa_tutorial.core.windows import window_mask
from swa_tutorial.tutorial.figures.plotting import (
    as_array,
    draw_matrix,
    score_labels,
    token_names,
)

# full tile, partial tile (a cell the window allows), partial tile (a masked cell), skipped tile
TILE_COLORS = {"full": "#a1d99b", "partial": "#fdd49e", "masked": "#fff3e0", "skipped": "#f0f0f0"}


def tile_kinds(seq_len: int, window, block_rows: int, block_cols: int) -> np.ndarray:
    """The kind of every key tile of every query tile: str [row tiles, key tiles], each one of
    "full", "partial", "skipped", as
    :func:`~swa_tutorial.core.tiling.key_tile_span` classifies them; window (left, right)."""
    left, right = window
    rows, cols = -(-seq_len // block_rows), -(-seq_len // block_cols)
    kinds = np.full((rows, cols), "skipped", dtype=object)
    for r in range(rows):
        start, full_start, full_end, end = key_tile_span(r, seq_len, left, right, block_rows, block_cols)
        kinds[r, start:end] = "partial"
        kinds[r, full_start:full_end] = "full"
    return kinds


def draw_tiles(ax, scores, window, block_rows: int, block_cols: int, *, labels=True, title=None):
    """S [L, L] cut into tiles of block_rows queries x block_cols keys, coloured by kind.

    A full tile green, a partial tile orange (its masked cells paler), a skipped tile grey; the
    window's cells carry their labels (``labels=False`` for a picture without numbers). The tile
    grid is drawn over the cells.
    """
    S = as_array(scores)
    L = S.shape[-1]
    allowed = window_mask(L, window).numpy()
    kinds = tile_kinds(L, window, block_rows, block_cols)
    cell_kind = np.repeat(np.repeat(kinds, block_rows, axis=0), block_cols, axis=1)[:L, :L]
    colors = np.vectorize(TILE_COLORS.get, otypes=[object])(cell_kind)
    colors[(cell_kind == "partial") & ~allowed] = TILE_COLORS["masked"]
    text = score_labels(S, allowed) if labels else np.full((L, L), "", dtype=object)
    names = token_names(L) if labels else None
    draw_matrix(ax, text=text, colors=colors, row_names=names, col_names=names, title=title if labels else None)
    if not labels:  # a large picture: the tiles' grid only, tokens counted on the axes
        ax.grid(False, which="minor")
        ticks = np.arange(0, L + 1, block_cols)
        ax.set_xticks(ticks - 0.5, [str(t) for t in ticks])
        ax.set_yticks(ticks - 0.5, [str(t) for t in ticks])
        ax.tick_params(labelsize=9)
        if title:
            ax.set_title(title, fontsize=10)
    for r in range(kinds.shape[0]):
        for c in range(kinds.shape[1]):
            ax.add_patch(mpatches.Rectangle((c * block_cols - 0.5, r * block_rows - 0.5), block_cols, block_rows,
                                            fill=False, edgecolor="black", linewidth=1.6, zorder=3))
    ax.set_xlim(-0.5, L - 0.5)
    ax.set_ylim(L - 0.5, -0.5)
    return ax


def tile_legend(fig, **kwargs):
    """A legend of the tile colours for ``fig`` (keyword arguments go to ``fig.legend``)."""
    names = {"full": "full tile (no mask)", "partial": "partial tile: a cell of the window",
             "masked": "partial tile: a masked cell", "skipped": "skipped tile (never loaded)"}
    handles = [mpatches.Patch(facecolor=TILE_COLORS[k], edgecolor="black", label=v) for k, v in names.items()]
    return fig.legend(handles=handles, **kwargs)
