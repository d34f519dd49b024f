"""Pictures of window shapes: a (left, right) window, the shifted band and the chunks that
compute it, and a dilated window's residue classes and fold.

Each ``draw_*`` function draws onto the matplotlib Axes (or Figure) it is given and returns it,
as :mod:`swa_tutorial.tutorial.figures.plotting` does; the chapters compute and assert what is drawn in cells of
their own. Tokens are numbered from 1 in every picture, as in the labelled example.
"""

from __future__ import annotations

from swa_tutorial.core.optional import require

require("matplotlib", "numpy", by=__name__, extra="plot")

import matplotlib.patches as mpatches
import numpy as np

from swa_tutorial.core.windows import (
    check_window,
    clip_window,
    in_window,
    key_offsets,
    window_mask,
)
from swa_tutorial.steps.shift import shifted_layout
from swa_tutorial.tutorial.figures.plotting import (
    CHUNK_COLORS,
    INVALID_COLOR,
    as_array,
    draw_matrix,
    score_labels,
    token_names,
)

CLASS_COLORS = ("#9ecae1", "#fdae6b", "#a1d99b", "#dadaeb", "#fcbba1", "#c7e9c0")


def shifted_band(seq_len: int, window) -> np.ndarray:
    """The cells the chunked algorithm scores for ``window``: bool [L, L], True where
    |j - i - shift| <= w for (w, shift) of the symmetric window about a shifted diagonal."""
    left, right = clip_window(check_window(window), seq_len - 1)
    w, shift, _, _ = shifted_layout(seq_len, left, right)
    return in_window(key_offsets(seq_len), (w - shift, w + shift)).numpy()  # shift - w <= j - i <= shift + w


def draw_window(ax, scores, window, *, dilation: int = 1, band=False, chunks=False, order=None, title=None):
    """The labelled scores S [L, L], the window's cells shaded and labelled, the rest blank.

    band: also draw the band the chunked algorithm scores (:func:`shifted_band`): its cells
    outside the window grey, an outline along its two edges. chunks: outline the 2w x 2w chunks
    as they fall on S once the keys are shifted (chunk c: query rows c w .. c w + 2w - 1 of the
    padded layout). dilation: colour each cell of the window by the residue class of its query
    (tokens i = r mod d). order: the tokens (from 0) in the order of the rows and columns, e.g.
    class by class (band and chunks are drawn for the natural order only).
    """
    S = as_array(scores)
    L = S.shape[-1]
    allowed = window_mask(L, window, dilation=dilation).numpy()
    colors = np.full((L, L), None, dtype=object)
    if band:
        colors[shifted_band(L, window) & ~allowed] = INVALID_COLOR
    if dilation > 1:
        query_class = np.broadcast_to(np.arange(L)[:, None] % dilation, (L, L))
        colors[allowed] = [CLASS_COLORS[r % len(CLASS_COLORS)] for r in query_class[allowed]]
    order = np.arange(L) if order is None else np.asarray(order)
    pick = np.ix_(order, order)
    names = [token_names(L)[t] for t in order]
    draw_matrix(ax, text=score_labels(S, allowed)[pick], shade=allowed[pick], colors=colors[pick],
                row_names=names, col_names=names, title=title)
    left, right = clip_window(check_window(window), L - 1)
    w, shift, lead, Lp = shifted_layout(L, left, right)
    if band:  # the band's edges, along the cell borders: row i holds keys i + shift - w .. i + shift + w
        rows = np.repeat(np.arange(L + 1) - 0.5, 2)[1:-1]  # each row's top and bottom
        for edge in (shift - w - 0.5, shift + w + 0.5):
            x = np.clip(np.repeat(np.arange(L) + edge, 2), -0.5, L - 0.5)
            ax.plot(x, rows, color="black", linewidth=2)
    if chunks:
        for c in range(Lp // w - 1):
            row, col = c * w - lead, c * w - lead + shift  # the first query and key token of chunk c
            ax.add_patch(mpatches.Rectangle((col - 0.5, row - 0.5), 2 * w, 2 * w, fill=False, linewidth=2.2,
                                            edgecolor=CHUNK_COLORS[c % len(CHUNK_COLORS)],
                                            linestyle=("-", "--")[c % 2], clip_on=True, zorder=3))
    ax.set_xlim(-0.5, L - 0.5)
    ax.set_ylim(L - 0.5, -0.5)
    return ax


def draw_band_layout(ax, band, valid, tokens, offsets, *, title=None):
    """A band [rows, 2w + 1] of labelled scores: valid cells shaded and labelled, others grey with
    "-"; a row of zeros (a query that is dropped) grey with its scores. tokens: the token (from 0)
    each row holds, or None for a zero row; offsets: the key - query of each column."""
    band, valid = as_array(band), as_array(valid).astype(bool)
    dropped = np.array([t is None for t in tokens])[:, None] & np.ones_like(valid)
    text = score_labels(band, valid | dropped)
    text[~valid & ~dropped] = "-"
    colors = np.where(valid & ~dropped, None, INVALID_COLOR)
    rows = ["zeros" if t is None else str(t + 1) for t in tokens]
    cols = [f"{o:+d}" if o else "0" for o in offsets]
    return draw_matrix(ax, text=text, shade=valid & ~dropped, colors=colors, row_names=rows, col_names=cols,
                       title=title)


def draw_fold(fig, seq_len: int, dilation: int):
    """The fold of a dilated window, in three panels: the L tokens coloured by residue class
    (position i, from 0, in class i mod d); ``unflatten`` into rows of d positions, one column
    per class (padded to a whole row); ``transpose``: d sequences of ceil(L / d) tokens, one per
    class, each in order."""
    d = dilation
    places = -(-seq_len // d)
    pos = np.arange(places * d)
    names = np.array([str(p + 1) if p < seq_len else "pad" for p in pos], dtype=object)
    colors = np.array([CLASS_COLORS[p % d % len(CLASS_COLORS)] if p < seq_len else INVALID_COLOR for p in pos],
                      dtype=object)
    grid, grid_colors = names.reshape(places, d), colors.reshape(places, d)
    panels = [
        (names[:seq_len][None, :], colors[:seq_len][None, :], f"{seq_len} tokens, coloured by class",
         None, None),
        (grid, grid_colors, f"unflatten: {places} places\nx {d} classes (columns)",
         [f"place {m}" for m in range(places)], [str(r) for r in range(d)]),
        (grid.T, grid_colors.T, f"transpose: {d} sequences of {places}",
         [f"class {r}" for r in range(d)], [str(m) for m in range(places)]),
    ]
    axes = fig.subplots(1, 3, gridspec_kw=dict(width_ratios=[seq_len, d + 1, places + 1], wspace=0.9))
    for ax, (text, color, title, rows, cols) in zip(axes, panels):
        draw_matrix(ax, text=text, colors=color, row_names=rows, col_names=cols, title=title, fontsize=9)
    for left, right in zip(axes[:-1], axes[1:]):  # an arrow from each panel to the next
        fig.text(left.get_position().x1 + 0.01, 0.5, "\u2192", fontsize=20, ha="left", va="center")
    return fig
