"""Explorers: one drawing function, shown two ways.

* :func:`live` wraps it in ipywidgets sliders; it redraws when a slider moves (needs a kernel).
* :func:`kernel_free` renders it once per value of one parameter into a matplotlib animation
  with its own slider (``to_jshtml``), which keeps working in the static HTML of the book.

A drawing function has the signature ``draw(fig, **params)`` and draws onto the empty figure it
is given. The chapters compute what it draws with functions of their own in checked cells,
because nbval compares neither images nor widget views.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.animation import FuncAnimation


def live(draw, figsize=(8, 4), **sliders):
    """ipywidgets controls for ``draw(fig, **params)``; pass ipywidgets sliders or fixed values."""
    import ipywidgets as widgets  # only a live notebook needs ipywidgets

    out = widgets.Output()

    def redraw(**params):
        with out:
            out.clear_output(wait=True)
            fig = plt.figure(figsize=figsize)
            draw(fig, **params)
            plt.show()

    controls = widgets.interactive(redraw, **sliders)
    return widgets.VBox([widgets.HBox(controls.children[:-1]), out])


def kernel_free(draw, name, values, figsize=(8, 4), dpi=72, **fixed):
    """A self-contained HTML animation: one frame of ``draw`` per value of parameter ``name``.

    Returns an ``IPython.display.HTML`` whose slider steps through ``values`` without a kernel.
    """
    from IPython.display import HTML

    fig = plt.figure(figsize=figsize, dpi=dpi)
    values = list(values)

    def frame(i):
        fig.clear()
        draw(fig, **{name: values[i]}, **fixed)

    anim = FuncAnimation(fig, frame, frames=len(values), interval=1000)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)


def chunk_work(seq_len: int, window: int) -> dict:
    """What the chunks of Explorer 1 cost, for L tokens and a one-sided window w.

    The chunks run at the padded length L' = ``padded_length(L, w)``; there are C = L' // w - 1 of
    them, each a 2w x 2w block of products. Only the P = L (2w + 1) - w (w + 1) pairs of real
    tokens with ``|i - j| <= w`` are useful (w clipped to L - 1); the rest of the C (2w)^2 are wasted.
    """
    from .attention import padded_length
    from .chunks import num_chunks

    padded = padded_length(seq_len, window)
    count = num_chunks(padded, window)
    reach = min(window, seq_len - 1)  # a window wider than the sequence sees no more keys
    useful = seq_len * (2 * reach + 1) - reach * (reach + 1)
    computed = count * (2 * window) ** 2
    return dict(padded_len=padded, chunks=count, useful=useful, computed=computed, wasted=computed - useful)


def draw_chunks_over_s(fig, L: int = 8, w: int = 2):
    """Explorer 1, chunks over S: the L' x L' score matrix (L' = L padded), band shaded, chunks outlined."""
    import numpy as np

    from .plotting import CHUNK_COLORS, INVALID_COLOR, draw_matrix, outline_chunks, token_names
    from .reference import dense_band_mask

    work = chunk_work(L, w)
    Lp = work["padded_len"]
    band = dense_band_mask(Lp, w).numpy()
    pos = np.arange(Lp)
    padding = (pos[:, None] >= L) | (pos[None, :] >= L)
    colors = np.where(padding & band, INVALID_COLOR, None)
    ax = fig.add_subplot(1, 1, 1)
    draw_matrix(ax, text=np.full((Lp, Lp), "", dtype=object), shade=band & ~padding, colors=colors,
                row_names=token_names(Lp) if Lp <= 24 else None, col_names=token_names(Lp) if Lp <= 24 else None)
    outline_chunks(ax, Lp, w)
    count = work["chunks"]
    ax.set_title(
        f"L = {L} (padded to {Lp}), w = {w}: C = {count} chunk{'s' * (count != 1)}\n"
        f"useful P = {work['useful']}, computed C(2w)² = {work['computed']}, wasted = {work['wasted']}",
        fontsize=10,
    )
    if count <= len(CHUNK_COLORS):  # beyond that the colours repeat: no legend
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
