"""Explorers: one drawing function, shown two ways.

* :func:`live` wraps it in ipywidgets sliders; it redraws when a slider moves (needs a kernel).
* :func:`kernel_free` renders it once per value of one parameter and shows the pictures under
  a slider of their own, which keeps working in the static HTML of the book
  (:mod:`.static_explorer`).

A drawing function has the signature ``draw(fig, **params)`` and draws onto the empty figure it
is given. The chapters compute what it draws with functions of their own in checked cells,
because nbval compares neither images nor widget views. The explorers compute what they draw
with the package's own steps:

1. :func:`draw_chunks_over_s`: the chunks over S, for any L and w (chapter 4);
2. :func:`draw_skew`: the skew of a chunk, stage by stage (chapter 8);
3. :func:`draw_band_vs_dense`: one query's row in the band and the dense layout (chapter 9);
4. :func:`draw_token_attention`: one token's softmax weights (chapter 10);
5. :func:`draw_unskew`: the second skew of a block of band rows and its value chunk (chapter 10).
"""

from __future__ import annotations

from swa_tutorial.core.optional import require

require("matplotlib", "numpy", by=__name__, extra="plot")

import matplotlib.patches as mpatches
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from swa_tutorial.core.windows import in_window, key_offsets
from swa_tutorial.reference import dense_band_mask
from swa_tutorial.steps.band import band_mask, band_scores, band_softmax, band_to_dense
from swa_tutorial.steps.chunks import (
    chunk,
    chunk_scores,
    merge_heads,
    num_chunks,
    padded_length,
)
from swa_tutorial.steps.labels import labelled_qkv
from swa_tutorial.steps.values import value_chunks
from swa_tutorial.tutorial.figures.plotting import (
    CHUNK_COLORS,
    INVALID_COLOR,
    draw_matrix,
    draw_memory,
    outline_chunks,
    score_labels,
    token_names,
)
from swa_tutorial.tutorial.figures.static_explorer import kernel_free  # noqa: F401  (the chapters import it from here)


def live(draw, figsize=(8, 4), **sliders):
    """ipywidgets controls for ``draw(fig, **params)``; pass ipywidgets sliders or fixed values."""
    require("ipywidgets", by=f"{__name__}.live", extra="widgets")  # only a live notebook needs it
    import ipywidgets as widgets

    out = widgets.Output()

    def redraw(**params):
        with out:
            out.clear_output(wait=True)
            fig = plt.figure(figsize=figsize)
            draw(fig, **params)
            plt.show()

    controls = widgets.interactive(redraw, **sliders)
    return widgets.VBox([widgets.HBox(controls.children[:-1]), out])


def index_colors(index, valid=None):
    """A colour per cell from an integer per cell (a diagonal offset, a key), grey where ``valid`` is False."""
    index = np.asarray(index)
    palette = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]  # no greys
    colors = np.empty(index.shape, dtype=object)
    for idx, k in np.ndenumerate(index):
        colors[idx] = tuple(0.45 + 0.55 * x for x in palette[(2 * int(k)) % len(palette)])
    if valid is not None:
        colors[~np.asarray(valid, bool)] = INVALID_COLOR
    return colors


# --- Explorer 1: chunks over S --------------------------------------------------------------------


def chunk_work(seq_len: int, window: int) -> dict:
    """What the chunks of Explorer 1 cost, for L tokens and a one-sided window w.

    The chunks run at the padded length L' = ``padded_length(L, w)``; there are C = L' // w - 1 of
    them, each a 2w x 2w block of products. Only the N = L (2w + 1) - w (w + 1) pairs of real
    tokens with ``|i - j| <= w`` are useful (w clipped to L - 1); the rest of the C (2w)^2 are wasted.
    """
    padded = padded_length(seq_len, window)
    count = num_chunks(padded, window)
    reach = min(window, seq_len - 1)  # a window wider than the sequence sees no more keys
    useful = seq_len * (2 * reach + 1) - reach * (reach + 1)
    computed = count * (2 * window) ** 2
    return dict(padded_len=padded, chunks=count, useful=useful, computed=computed, wasted=computed - useful)


def draw_chunks_over_s(fig, L: int = 8, w: int = 2):
    """Explorer 1, chunks over S: the L' x L' score matrix (L' = L padded), band shaded, chunks outlined."""
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
        f"useful N = {work['useful']}, computed C(2w)² = {work['computed']}, wasted = {work['wasted']}",
        fontsize=10,
    )
    if count <= len(CHUNK_COLORS):  # beyond that the colours repeat: no legend
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)


# --- Explorer 2: the skew ------------------------------------------------------------------------

SKEW_STAGES = ("the chunk", "pad", "flat memory", "view", "slice")


def skew_stages(chunk_index: int = 0, window: int = 2, seq_len: int = 8) -> dict:
    """The skew of one labelled chunk, stage by stage: what explorer 2 draws.

    Returns the chunk's scores [2w, 2w]; the rows padded with w zeros on each side [2w, 4w]; the
    same numbers as flat memory [8 w^2]; that memory read with a row stride one longer (4w + 1),
    [2w, 4w + 1] rows (the last reads past the end, so it is shortened); and the slice of the
    first 2w + 1 columns, [2w, 2w + 1], which is ``skew(scores, -w, 2w + 1)``.
    """
    w = window
    q, k, _ = labelled_qkv(seq_len)
    scores = chunk_scores(chunk(merge_heads(q), w), chunk(merge_heads(k), w))[0, chunk_index]
    padded = F.pad(scores, (w, w))  # 2w x 4w
    flat = padded.flatten()  # 8 w^2
    row = 4 * w + 1
    view = [flat[r * row : r * row + row] for r in range(2 * w)]  # row r starts r * (4w + 1)
    sliced = padded.as_strided((2 * w, 2 * w + 1), (row, 1))
    return {"the chunk": scores, "pad": padded, "flat memory": flat, "view": view, "slice": sliced}


def skew_positions(stage: int, window: int = 2) -> np.ndarray:
    """Where each cell of a stage of explorer 2 sits in the padded chunk's flat memory (-1: no read).

    The padded chunk is [2w, 4w], so position p is row p // 4w, column p % 4w. The view reads
    row r from position r (4w + 1) on: the row stride one longer.
    """
    w = window
    n, row = 8 * w * w, 4 * w + 1
    r = np.arange(2 * w)[:, None]
    name = SKEW_STAGES[stage]
    if name == "the chunk":
        return r * 4 * w + w + np.arange(2 * w)
    if name == "pad":
        return np.arange(n).reshape(2 * w, 4 * w)
    if name == "flat memory":
        return np.arange(n)[None, :]
    pos = r * row + np.arange(row if name == "view" else 2 * w + 1)
    return np.where(pos < n, pos, -1)


def draw_skew(fig, stage: int = 0, chunk_index: int = 0, window: int = 2, seq_len: int = 8):
    """Explorer 2: one stage of the skew of a labelled chunk, cells coloured by their diagonal."""
    w = window
    name = SKEW_STAGES[stage]
    labels = score_labels(skew_stages(chunk_index, w, seq_len)["flat memory"])
    pos = skew_positions(stage, w)
    query, key = pos // (4 * w), pos % (4 * w) - w  # the query row and key column in the chunk
    colors = index_colors(key - query, (key >= 0) & (key < 2 * w))
    colors[pos < 0] = "white"
    text = np.where(pos < 0, "", labels[pos])
    if name == "flat memory":  # two padded rows per line; outlined: the runs the view reads
        ax = fig.add_axes((0.07, 0.05, 0.9, 0.6))
        draw_memory(ax, text[0], colors[0], line=8 * w, row_len=4 * w,
                    runs=[(x * (4 * w + 1), 2 * w + 1) for x in range(2 * w)])
    else:
        ax = fig.add_axes((0.07, 0.03, 0.9, 0.72))
        draw_matrix(ax, text=text, colors=colors, fontsize=11, row_names=token_names(2 * w, chunk_index * w + 1))
    if name == "view":  # the slice that is kept
        ax.add_patch(mpatches.Rectangle((-0.5, -0.5), 2 * w + 1, 2 * w, fill=False, edgecolor="black", linewidth=2.5))
    titles = {
        "the chunk": f"chunk {chunk_index}, [{2 * w}, {2 * w}]; colour = diagonal (key - query)",
        "pad": f"each row padded with {w} zeros on each side: [{2 * w}, {4 * w}]",
        "flat memory": f"the same {8 * w * w} numbers in memory, row after row (black ticks: where a row ends);\n"
        f"outlined: the {2 * w + 1} numbers each row of the view reads, every {4 * w + 1} positions",
        "view": f"read back with a row stride of {4 * w + 1}, one longer: each row starts one further right;\n"
        f"the last row stops at the end of the memory",
        "slice": f"keep the first {2 * w + 1} columns: diagonals are now columns",
    }
    ax.set_title(f"{stage + 1}. {name}: {titles[name]}", fontsize=11, pad=20 if name == "flat memory" else 14)
    return fig


# --- Explorer 3: band vs dense layout -------------------------------------------------------------


def band_and_dense_rows(token: int, seq_len: int = 8, window: int = 2) -> dict:
    """Query ``token`` (numbered from 1) of the labelled example in both layouts: explorer 3's numbers.

    Returns the dense row of S inside the band (labels, '' outside), the band row [2w + 1]
    (labels, '' where the key is invalid) and the key token of each band cell (0 for none).
    """
    w, i = window, token - 1
    q, k, _ = labelled_qkv(seq_len)
    band = band_scores(chunk_scores(chunk(merge_heads(q), w), chunk(merge_heads(k), w)))[0]
    mask = band_mask(seq_len, w)[0]
    dense = band_to_dense(band.masked_fill(~mask, 0))
    keys = [j + 1 if m else 0 for j, m in zip(range(i - w, i + w + 1), mask[i].tolist())]
    return {
        "dense row": score_labels(dense[i], dense[i] != 0).tolist(),
        "band row": score_labels(band[i], mask[i]).tolist(),
        "band keys": keys,
    }


def draw_band_vs_dense(fig, token: int = 1, seq_len: int = 8, window: int = 2):
    """Explorer 3: the labelled S in dense layout [L, L] and band layout [L, 2w + 1], one query's row lit."""
    w, L, i = window, seq_len, token - 1
    q, k, _ = labelled_qkv(L)
    band = band_scores(chunk_scores(chunk(merge_heads(q), w), chunk(merge_heads(k), w)))[0]
    mask = band_mask(L, w)[0].numpy()
    offsets = key_offsets(L)  # L x L: j - i
    dense_offsets, in_band = offsets.numpy(), in_window(offsets, (w, w)).numpy()
    dense_colors = np.full((L, L), None, dtype=object)
    dense_colors[i] = index_colors(dense_offsets[i : i + 1], in_band[i : i + 1])[0]
    dense_colors[i, ~in_band[i]] = None
    band_colors = np.full((L, 2 * w + 1), None, dtype=object)
    band_colors[~mask] = INVALID_COLOR
    band_colors[i] = index_colors(np.arange(-w, w + 1)[None, :], mask[i : i + 1])[0]
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    dense = band_to_dense(band.masked_fill(~torch.from_numpy(mask), 0))
    draw_matrix(ax1, text=score_labels(dense, in_band), shade=in_band, colors=dense_colors,
                row_names=token_names(L), col_names=token_names(L), title="dense layout: S [L, L]")
    text = score_labels(band, mask)
    text[~mask] = "-"
    draw_matrix(ax2, text=text, shade=mask, colors=band_colors, row_names=token_names(L),
                col_names=[f"{o:+d}" if o else "0" for o in range(-w, w + 1)],
                title="band layout [L, 2w + 1]: key - query")
    for ax, width in ((ax1, L), (ax2, 2 * w + 1)):
        ax.add_patch(mpatches.Rectangle((-0.5, i - 0.5), width, 1, fill=False, edgecolor="black", linewidth=2.5))
    fig.text(0.5, 0.01, f"query token {token} sees keys {max(1, token - w)}..{min(L, token + w)}; "
             "the same colour is the same key in both layouts", ha="center", fontsize=10)
    return fig


# --- Explorer 4: the attention of one token ---------------------------------------------------------


def token_attention(token: int, window: int, seq_len: int = 16, dim: int = 8, seed: int = 0) -> torch.Tensor:
    """Explorer 4's numbers: the softmax weights [L] of query ``token`` (from 1) over all L keys.

    Random q, k [1, L, 1, dim] from a generator seeded with ``seed``, default scale 1 / sqrt(dim),
    computed with the package's steps (padded to a whole number of chunks, invalid keys masked);
    keys outside the window get weight 0.
    """
    w, L = window, seq_len
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(1, L, 1, dim, generator=gen, dtype=torch.float64) for _ in range(2))
    Lp = padded_length(L, w)

    def prepare(x):  # [1, L, 1, dim] -> [1, Lp, dim], zero rows appended
        return F.pad(merge_heads(x), (0, 0, 0, Lp - L))

    band = band_scores(chunk_scores(chunk(prepare(q) / dim**0.5, w), chunk(prepare(k), w)))
    probs = band_softmax(band, band_mask(L, w, padded_len=Lp))  # 1 x Lp x (2w + 1)
    return band_to_dense(probs[0])[token - 1, :L]


def draw_token_attention(fig, token: int = 8, window: int = 2, seq_len: int = 16, seed: int = 0):
    """Explorer 4: query ``token``'s window over the sequence and its softmax weights."""
    weights = token_attention(token, window, seq_len, seed=seed).numpy()
    L, w = seq_len, window
    inside = np.abs(np.arange(L) - (token - 1)) <= w
    ax1 = fig.add_axes((0.09, 0.7, 0.88, 0.12))
    colors = np.full((1, L), None, dtype=object)
    colors[0, token - 1] = "#f7b6b6"
    draw_matrix(ax1, text=np.array([token_names(L)]), shade=inside[None, :], colors=colors, fontsize=8)
    ax1.set_title(f"token {token} with w = {w}: it sees tokens {max(1, token - w)}..{min(L, token + w)}",
                  fontsize=10, pad=6)
    ax2 = fig.add_axes((0.09, 0.13, 0.88, 0.48))
    ax2.bar(np.arange(1, L + 1), weights, color=np.where(inside, "#1f77b4", "#cccccc"))
    ax2.set_xlim(0.5, L + 0.5)
    ax2.set_ylim(0, 1)
    ax2.set_xticks(np.arange(1, L + 1))
    ax2.set_xlabel("key token")
    ax2.set_ylabel("softmax weight")
    for x, y in zip(np.arange(1, L + 1), weights):
        if y > 0:
            ax2.text(x, y + 0.02, f"{y:.2f}", ha="center", fontsize=8)
    return fig


# --- Explorer 5: the second skew and the 3w value chunks ------------------------------------------

UNSKEW_STAGES = ("the band rows", "pad", "flat memory", "view", "times the value chunk")


def unskew_stages(block: int = 1, window: int = 2, seq_len: int = 8) -> dict:
    """The second skew of block g's band rows, stage by stage, on the labelled example: what explorer 5 draws.

    Block g holds the queries g w .. g w + w - 1. Returns its band rows [w, 2w + 1] (labels 10 i + j,
    0 where the key does not exist); the rows padded with w zeros on the right [w, 3w + 1]; the same
    numbers as flat memory [w (3w + 1)]; that memory read with a row stride one shorter, 3w, as a
    [w, 3w] view, which is ``unskew`` of the rows; and value chunk g [3w, d] of ``value_chunks``,
    tokens (g - 1) w .. (g + 2) w - 1 (zeros outside the sequence), that the view multiplies.
    """
    w = window
    q, k, v = labelled_qkv(seq_len)
    band = band_scores(chunk_scores(chunk(merge_heads(q), w), chunk(merge_heads(k), w)))[0]  # L x (2w + 1)
    rows = band[block * w : block * w + w]  # w x (2w + 1)
    padded = F.pad(rows, (0, w))  # w x (3w + 1)
    flat = padded.flatten()
    view = flat.as_strided((w, 3 * w), (3 * w, 1))  # row x starts x places before padded row x
    values = value_chunks(merge_heads(v), w)[0, block]  # 3w x d
    return {"the band rows": rows, "pad": padded, "flat memory": flat, "view": view, "value chunk": values}


def unskew_positions(stage: int, window: int = 2) -> np.ndarray:
    """Where each cell of a stage of explorer 5 sits in the padded band rows' flat memory.

    The padded rows are [w, 3w + 1], so position p is row p // (3w + 1), column p % (3w + 1). The
    view reads row x from position 3w x on: the row stride one shorter.
    """
    w = window
    row = 3 * w + 1
    x = np.arange(w)[:, None]
    name = UNSKEW_STAGES[stage]
    if name == "the band rows":
        return x * row + np.arange(2 * w + 1)
    if name == "pad":
        return np.arange(w * row).reshape(w, row)
    if name == "flat memory":
        return np.arange(w * row)[None, :]
    return x * 3 * w + np.arange(3 * w)  # the view, alone or beside its value chunk


def draw_unskew(fig, stage: int = 0, block: int = 1, window: int = 2, seq_len: int = 8):
    """Explorer 5: one stage of the second skew of a labelled block, cells coloured by their key."""
    w, L, g = window, seq_len, block
    name = UNSKEW_STAGES[stage]
    stages = unskew_stages(g, w, seq_len)
    labels = score_labels(stages["flat memory"])
    pos = unskew_positions(stage, w)
    x, t = pos // (3 * w + 1), pos % (3 * w + 1)  # the query row and band column of each number
    key = g * w + x + t - w  # its key's index (from 0)
    real = (t <= 2 * w) & (key >= 0) & (key < L)
    colors = index_colors(key, real)
    colors[t > 2 * w] = "white"  # the padding zeros
    first_key = g * w - w  # value chunk g starts here
    keys = [str(j + 1) if 0 <= j < L else "pad" for j in range(first_key, first_key + 3 * w)]
    queries = token_names(w, g * w + 1)
    if name == "flat memory":
        ax = fig.add_axes((0.07, 0.05, 0.9, 0.6))
        draw_memory(ax, labels[pos[0]], colors[0], line=pos.shape[1], row_len=3 * w + 1,
                    runs=[(r * 3 * w, 3 * w) for r in range(w)])
    elif name == "times the value chunk":
        ax = fig.add_axes((0.05, 0.04, 0.58, 0.64))
        draw_matrix(ax, text=labels[pos], colors=colors, fontsize=11, row_names=queries, col_names=keys)
        ax_v = fig.add_axes((0.72, 0.04, 0.25, 0.64))
        chunk_keys = np.arange(first_key, first_key + 3 * w)
        inside = (chunk_keys >= 0) & (chunk_keys < L)
        v_colors = np.repeat(index_colors(chunk_keys, inside)[:, None], stages["value chunk"].shape[1], axis=1)
        draw_matrix(ax_v, stages["value chunk"], colors=v_colors, fontsize=11, row_names=keys,
                    col_names=["a", "b"])
        fig.text(0.675, 0.36, "×", fontsize=22, ha="center", va="center")
    else:
        ax = fig.add_axes((0.07, 0.03, 0.9, 0.68))
        col_names = {"the band rows": [f"{o:+d}" if o else "0" for o in range(-w, w + 1)], "view": keys}
        draw_matrix(ax, text=labels[pos], colors=colors, fontsize=11, row_names=queries,
                    col_names=col_names.get(name))
    titles = {
        "the band rows": f"block {g}: queries {g * w + 1}-{g * w + w}, [{w}, {2 * w + 1}], one column per offset;\n"
        "colour = key (grey: no key)",
        "pad": f"each row padded with {w} zeros on the right: [{w}, {3 * w + 1}]",
        "flat memory": f"the same {w * (3 * w + 1)} numbers in memory, row after row (black ticks: where a row ends);\n"
        f"outlined: the {3 * w} numbers each row of the view reads, every {3 * w} positions",
        "view": f"read back with a row stride of {3 * w}, one shorter: each row starts one further left,\n"
        f"so its numbers land one further right: one key per column (tokens on top)",
        "times the value chunk": f"[{w}, {3 * w}] × value chunk {g}, [{3 * w}, d] with v_j = (j, 1):\n"
        "column y of the block meets row y of the chunk, the same key",
    }
    fig.text(0.5, 0.98, f"{stage + 1}. {name}: {titles[name]}", fontsize=11, ha="center", va="top")
    return fig
