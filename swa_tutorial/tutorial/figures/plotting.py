"""Pictures in the spirit of the source document: small labelled matrices, the band shaded, chunks outlined.

Every function draws onto a matplotlib ``Axes`` it is given and returns it, so the chapters, the
live explorers and the kernel-free explorers all draw the same pictures. Tensors are accepted
wherever an array is.
"""

from __future__ import annotations

from swa_tutorial.core.optional import require

require("matplotlib", "numpy", by=__name__, extra="plot")

import matplotlib.colors as mcolors
import matplotlib.patches as mpatches
import numpy as np
import torch

BAND_COLOR = "#cfe3f7"  # cells inside the band |i - j| <= w
INVALID_COLOR = "#e6e6e6"  # band cells whose key is outside the sequence, or padding
CHUNK_COLORS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")


def as_array(x) -> np.ndarray:
    """A tensor or array-like as a NumPy array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def token_names(n: int, first: int = 1) -> list[str]:
    """Tick labels for n tokens, numbered from ``first`` as in the source document (1 .. n)."""
    return [str(i) for i in range(first, first + n)]


def draw_matrix(
    ax,
    values=None,
    *,
    text=None,
    shade=None,
    colors=None,
    blank=None,
    fmt="{:.0f}",
    row_names=None,
    col_names=None,
    title=None,
    fontsize=None,
):
    """Draw an R x N matrix as a grid of cells with a label in each.

    values: [R, N] numbers printed with ``fmt``; or ``text``: [R, N] strings printed as they are.
    shade: bool [R, N], cells filled with ``BAND_COLOR``; colors: [R, N] of matplotlib colours
    (or None per cell) that override it; blank: bool [R, N], cells left empty (no label).
    row_names, col_names: tick labels for rows (left) and columns (top).
    """
    if text is None:
        values = as_array(values)
        text = np.vectorize(lambda v: fmt.format(v), otypes=[object])(values)
    text = np.asarray(text, dtype=object)
    R, N = text.shape
    rgb = np.ones((R, N, 3))
    if shade is not None:
        rgb[as_array(shade).astype(bool)] = mcolors.to_rgb(BAND_COLOR)
    if colors is not None:
        for (r, c), color in np.ndenumerate(np.asarray(colors, dtype=object)):
            if color is not None:
                rgb[r, c] = mcolors.to_rgb(color)
    ax.imshow(rgb, extent=(-0.5, N - 0.5, R - 0.5, -0.5), interpolation="nearest")
    blank = np.zeros((R, N), bool) if blank is None else as_array(blank).astype(bool)
    size = fontsize or max(5, min(11, 90 / max(R, N)))
    for (r, c), label in np.ndenumerate(text):
        if not blank[r, c]:
            ax.text(c, r, label, ha="center", va="center", fontsize=size)
    ax.set_xticks(np.arange(-0.5, N), minor=True)
    ax.set_yticks(np.arange(-0.5, R), minor=True)
    ax.grid(which="minor", color="#999999", linewidth=0.6)
    ax.tick_params(which="both", length=0, labelsize=size, top=True, labeltop=True, bottom=False, labelbottom=False)
    ax.set_xticks(np.arange(N), col_names if col_names is not None else [""] * N)
    ax.set_yticks(np.arange(R), row_names if row_names is not None else [""] * R)
    if title:
        ax.set_title(title, fontsize=size + 1, pad=2.2 * size)
    return ax


def outline_chunks(ax, seq_len: int, window: int, chunks=None, *, on="both", linewidth=2.5):
    """Outline chunk c (tokens c w .. c w + 2w - 1) over an L x L picture, one colour per chunk.

    on="both" draws the 2w x 2w square where the chunk meets itself; "rows" draws the chunk's
    rows across the full width (for a picture of Q, K or V, or the band layout).
    ``chunks`` picks which chunks (default: all C = L // w - 1).
    """
    count = seq_len // window - 1
    for c in range(count) if chunks is None else chunks:
        start = c * window - 0.5
        width = ax.get_xlim()[1] - ax.get_xlim()[0] if on == "rows" else 2 * window
        x0 = ax.get_xlim()[0] if on == "rows" else start
        ax.add_patch(
            mpatches.Rectangle(
                (x0, start), width, 2 * window, fill=False,
                edgecolor=CHUNK_COLORS[c % len(CHUNK_COLORS)], linewidth=linewidth,
                linestyle=("-", "--")[c % 2], zorder=3, label=f"chunk {c}",
            )
        )
    return ax


def score_labels(scores, mask=None) -> np.ndarray:
    """Integer labels of a labelled score tensor (10 i + j) as strings; '' where mask is False."""
    scores = as_array(scores)
    text = np.vectorize(lambda v: f"{v:.0f}", otypes=[object])(scores)
    if mask is not None:
        text[~as_array(mask).astype(bool)] = ""
    return text


def draw_memory(ax, text, colors, *, line: int, row_len: int, runs=(), fontsize=11):
    """Flat memory, one cell per number, wrapped into lines of ``line`` cells: position p sits in
    line p // line, column p % line.

    text, colors: [n], one label and one colour (or None) per position. A thick black tick marks
    where each row of ``row_len`` numbers ends in memory; ``runs`` are (start, length) ranges of
    positions outlined in black, split where they cross the end of a line.
    """
    n = len(text)
    lines = -(-n // line)
    pos = np.arange(lines * line).reshape(lines, line)
    inside = pos < n
    cell_text = np.where(inside, np.asarray(text, dtype=object)[pos.clip(max=n - 1)], "")
    cell_colors = np.where(inside, np.asarray(colors, dtype=object)[pos.clip(max=n - 1)], "white")
    draw_matrix(ax, text=cell_text, colors=cell_colors, fontsize=fontsize,
                row_names=[str(p) for p in pos[:, 0]], col_names=[f"+{c}" for c in range(line)])
    for end in range(row_len, n, row_len):  # where a row of the matrix ends
        ln, col = divmod(end, line)
        if col:
            ax.plot([col - 0.5] * 2, [ln - 0.5, ln + 0.5], color="black", linewidth=3, solid_capstyle="butt")
    for start, length in runs:
        while length > 0:
            ln, col = divmod(start, line)
            piece = min(length, line - col)
            ax.add_patch(mpatches.Rectangle((col - 0.5, ln - 0.5), piece, 1, fill=False,
                                            edgecolor="black", linewidth=2.5, zorder=3))
            start, length = start + piece, length - piece
    return ax


def mark_row_ranges(ax, ranges, labels, *, width=0.9, fontsize=11):
    """Coloured bars right of a matrix drawn on ``ax``, one per (first, last) range of its rows.

    Bar k spans rows first .. last in ``CHUNK_COLORS[k]`` with ``labels[k]`` written beside it,
    upright, so that neighbouring labels never collide. The bars live in an inset axes right of
    ``ax`` (``width`` is its width as a fraction of ``ax``'s), which follows ``ax`` wherever the
    layout puts it.
    """
    bars = ax.inset_axes((1.03, 0, width, 1))
    bars.set_ylim(ax.get_ylim())
    bars.set_xlim(0, len(ranges))
    bars.axis("off")
    for k, ((first, last), label) in enumerate(zip(ranges, labels)):
        color = CHUNK_COLORS[k % len(CHUNK_COLORS)]
        bars.plot([k + 0.25] * 2, [first - 0.4, last + 0.4], color=color, linewidth=5, solid_capstyle="butt")
        bars.text(k + 0.45, (first + last) / 2, label, rotation=90, ha="left", va="center", color=color,
                  fontsize=fontsize)
    return bars


RANK_COLORS = ("#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fc9272", "#c7c7c7")  # one per rank, cycled


def draw_halo(ax, lengths, window, *, dilation=1, backward=False, first=1):
    """The halo exchange of :mod:`swa_tutorial.distributed`: who sends which tokens to whom.

    One row per rank, holding its [left halo | shard | right halo] at the tokens' positions
    (numbered from ``first``): its own tokens with a solid edge, the halo's dashed, each token
    coloured by the rank that owns it. One arrow per transfer of
    :func:`~swa_tutorial.distributed.halo_plan`, from the owner to the receiver, marked with the
    keys and values it carries (for more than two ranks, only how many tokens); ``backward``
    reverses them: the halo's gradients going home.
    """
    from swa_tutorial.distributed import (  # only this picture needs it
        halo_plan,
        shard_starts,
    )

    starts, plan = shard_starts(lengths), halo_plan(lengths, window, dilation)
    owner = [r for r, n in enumerate(lengths) for _ in range(n)]
    gap = 2.2  # rows this far apart leave room for the arrows

    def cell(token, rank, own):
        color = RANK_COLORS[owner[token] % len(RANK_COLORS)]
        ax.add_patch(mpatches.Rectangle((token - 0.45, rank * gap - 0.45), 0.9, 0.9, facecolor=color, zorder=2,
                                        edgecolor="black", linestyle="-" if own else "--",
                                        linewidth=1.2 if own else 0.9, alpha=1 if own else 0.55))
        ax.text(token, rank * gap, str(token + first), ha="center", va="center", fontsize=9, zorder=3)

    for rank in range(len(lengths)):
        for token in range(starts[rank], starts[rank + 1]):
            cell(token, rank, own=True)
    for t in plan:
        for token in range(t.start, t.stop):
            cell(token, t.dst, own=False)
        src, dst = (t.dst, t.src) if backward else (t.src, t.dst)
        x = (t.start + t.stop - 1) / 2
        bend = -0.3 * (abs(src - dst) - 1) * np.sign(dst - src)  # to the right, behind the rows in between
        down = np.sign(dst - src)  # +1: the arrow goes down the picture
        ax.annotate("", xy=(x, dst * gap - 0.5 * down), xytext=(x, src * gap + 0.5 * down), zorder=1,
                    arrowprops=dict(arrowstyle="-|>", color="black", linewidth=1.2,
                                    connectionstyle=f"arc3,rad={bend}"))
        count = t.stop - t.start
        what = f"{'dk, dv' if backward else 'k, v'}\n{count} token{'s' * (count > 1)}" if len(lengths) == 2 else count
        # on the arrow's left (a curved one bends right): half way to a neighbour, else close to the
        # receiver, where the arrows that reach one rank carry distinct tokens
        near = (src + dst) / 2 * gap if abs(src - dst) == 1 else dst * gap - 0.75 * down
        ax.text(x - 0.14, near, what, fontsize=9, va="center", ha="right", zorder=4,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    ax.set_xlim(-0.7, starts[-1] - 0.3)
    ax.set_ylim((len(lengths) - 1) * gap + 0.7, -0.7)
    ax.set_yticks([r * gap for r in range(len(lengths))], [f"rank {r}" for r in range(len(lengths))])
    ax.set_xticks([])
    ax.set_aspect("equal")
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return ax
