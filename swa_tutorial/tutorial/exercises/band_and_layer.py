"""The exercises of chapters 7 to 11: the chunked product, the skew, the band, the softmax and
P x V, and the whole layer.

Each exercise's cases take their expected values from the package; its suspects are the typical
wrong computations, each with the mistake that gives it (see :mod:`.framework`).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
import torch.nn.functional as F

from swa_tutorial.reference import dense_attention, dense_band_mask
from swa_tutorial.steps.band import band_mask, band_scores, band_softmax, dense_to_band
from swa_tutorial.steps.chunks import chunk, chunk_scores, merge_heads, padded_length, split_heads
from swa_tutorial.steps.labels import labelled_qkv
from swa_tutorial.steps.skewing import skew, unskew
from swa_tutorial.steps.values import band_times_values, value_chunks
from swa_tutorial.tutorial.exercises.dense_and_chunks import chunked_indices
from swa_tutorial.tutorial.exercises.framework import (
    Case,
    Exercise,
    Suspect,
    generator,
    randn,
    same_int,
    same_ints,
    same_tensor,
)

# ---------------------------------------------------------------------------------------------
# Chapter 7: the chunked product.


def _chunk_scores() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 2), (2, 15, 4, 3)]):
        q, k = randn(2, BH, L, d, seed=seed)
        qc, kc = chunk(q, w), chunk(k, w)
        yield Case(f"chunk_scores(q_chunks, k_chunks) with chunks [B*H, C, 2w, d] = {list(qc.shape)}", (qc, kc),
                   chunk_scores(qc, kc), same_tensor(("row", "chunk", "x", "y"), exact=False))


CHUNK_SCORES = (
    Suspect(lambda qc, kc: torch.einsum("rcxd,rcyd->rcyx", qc, kc),
            "the keys down the rows: scores[..., x, y] is query x against key y ('rcxd,rcyd->rcxy')"),
    Suspect(lambda qc, kc: chunk_scores(qc, kc) / qc.shape[-1] ** 0.5,
            "scaled: chunk_scores is the plain product (the layer scales q before it)"),
)


def _wasted_scores_expected(L: int, w: int) -> tuple[int, int, int]:
    """(repeats, outside, padding), counted cell by cell over the chunks of the padded length."""
    Lp = padded_length(L, w)
    count = torch.zeros(Lp, Lp, dtype=torch.int64)
    for tokens in chunked_indices(Lp, w):
        count[tokens[:, None], tokens[None, :]] += 1
    real = torch.arange(Lp) < L
    real_pairs = real[:, None] & real[None, :]
    band = dense_band_mask(Lp, w) & real_pairs
    return (int((count - 1).clamp(min=0)[band].sum()), int(count[real_pairs & ~band].sum()),
            int(count[~real_pairs].sum()))


def _wasted_scores() -> Iterator[Case]:
    for w in range(1, 7):
        for L in range(1, 8 * w + 1):
            yield Case(f"wasted_scores(L={L}, w={w})", (L, w), _wasted_scores_expected(L, w), same_ints,
                       "counting each chunk's cells over the padded length")


def _waste_formulas(L: int, w: int) -> tuple[int, int, int]:
    C = L // w - 1
    return (C - 1) * w * w, C * w * (w - 1), 0


WASTED_SCORES = (
    Suspect(lambda L, w: _waste_formulas(L, w) if L % w and L >= 2 * w else None,
            "the chapter's formulas hold when w divides L; for other lengths the chunks run at the padded "
            "length L' = padded_length(L, w)"),
    Suspect(lambda L, w: _waste_formulas(padded_length(L, w), w) if padded_length(L, w) != L else None,
            "the formulas at L' count the padding tokens' scores as useful, repeats or outside: a score whose "
            "query or key is a padding token counts as padding"),
    Suspect(lambda L, w: (lambda r, o, p: (o, r, p))(*_wasted_scores_expected(L, w)),
            "repeats and outside swapped: (repeats, outside, padding)"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 8: the skew.


def _labelled_scores(w: int, seq_len: int) -> torch.Tensor:
    """The chunk scores [1, C, 2w, 2w] of the labelled example (10 i + j)."""
    q, k, _ = labelled_qkv(seq_len)
    return chunk_scores(chunk(merge_heads(q), w), chunk(merge_heads(k), w))


def _skew_chunk() -> Iterator[Case]:
    inputs = [(_labelled_scores(2, 8), 2), (randn(2, 3, 6, 6, seed=0), 3), (randn(4, 2, 2, seed=1), 1)]
    for m, w in inputs:
        yield Case(f"skew_chunk(m, w={w}) with m {list(m.shape)}", (m, w), skew(m, -w, 2 * w + 1),
                   same_tensor(("",) * (m.dim() - 2) + ("x", "t"), exact=False), f"skew(m, -{w}, {2 * w + 1})")


def _read_rows(m: torch.Tensor, w: int, pad: tuple[int, int], longer: int) -> torch.Tensor:
    """m's rows padded by ``pad`` and read 2w + 1 at a time with a row stride ``longer`` than a row."""
    padded = F.pad(m, pad)
    *lead, rows, cols = padded.shape
    return padded.as_strided((*lead, rows, 2 * w + 1), (*padded.stride()[:-2], cols + longer, 1))


SKEW_CHUNK = (
    Suspect(lambda m, w: _read_rows(m, w, (w, w), 0),
            "a row stride of 4w, the padded row's own length, reads every row from its start: nothing moves; "
            "the skew reads with a stride one longer, 4w + 1"),
    Suspect(lambda m, w: _read_rows(m, w, (0, 2 * w), 1),
            "padded on the right only: row 0 must start with w zeros (the keys -w .. -1), pad w on each side"),
)


def _view_row_lengths() -> Iterator[Case]:
    from swa_tutorial.tutorial.figures.explorers import (
        skew_stages,  # here, so that only this exercise needs matplotlib
    )

    for w in range(1, 7):
        lengths = [len(row) for row in skew_stages(0, w, seq_len=2 * w)["view"]]
        yield Case(f"view_row_lengths(w={w})", (w,), lengths, same_ints,
                   "swa_tutorial.tutorial.figures.explorers.skew_stages")


VIEW_ROW_LENGTHS = (
    Suspect(lambda w: [4 * w + 1] * (2 * w),
            "as if the memory never ended: the last row starts at (2w - 1)(4w + 1) and finds only the 8w^2 "
            "numbers before the end"),
    Suspect(lambda w: [4 * w] * (2 * w),
            "4w is a padded row; the view's row is one longer, 4w + 1, and the last is cut by the end"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 9: the band.


def _dense_to_band() -> Iterator[Case]:
    for seed, (shape, w) in enumerate([((8, 8), 2), ((2, 5, 5), 1), ((3, 9, 9), 3), ((4, 4), 6)]):
        S = randn(*shape, seed=seed)
        yield Case(f"dense_to_band(S, w={w}) with S {list(shape)}", (S, w), dense_to_band(S, w),
                   same_tensor(("",) * (len(shape) - 2) + ("query", "t")))


def _gathered_band(S: torch.Tensor, w: int, sign: int, zero_outside: bool) -> torch.Tensor:
    L = S.shape[-1]
    key = torch.arange(L)[:, None] + sign * torch.arange(-w, w + 1)  # [L, 2w + 1]
    inside = (key >= 0) & (key < L)
    picked = S.gather(-1, key.clamp(0, L - 1).expand(*S.shape[:-1], -1))
    return picked.masked_fill(~inside, 0) if zero_outside else picked


DENSE_TO_BAND = (
    Suspect(lambda S, w: _gathered_band(S, w, -1, True), "column t holds key i + t - w (offset t - w), not i - t + w"),
    Suspect(lambda S, w: _gathered_band(S, w, 1, False),
            "keys outside 0 .. L - 1 read a clamped neighbour: those cells hold 0"),
)


def _band_mask() -> Iterator[Case]:
    for L in range(1, 13):
        for w in range(1, 7):
            yield Case(f"band_mask(L={L}, w={w})", (L, w), band_mask(L, w), same_tensor(("batch", "query", "t")))


def _keys(L: int, w: int) -> torch.Tensor:
    return torch.arange(L)[:, None] + torch.arange(-w, w + 1)  # [L, 2w + 1]: key i + t - w


_BATCH = ("band_mask keeps a leading batch dimension of 1 (a key padding mask [B, L] makes it B), so that one "
          "mask broadcasts over the scores [B*H, L, 2w + 1]: add it with [None]")
_MASKS = (
    (lambda L, w: (_keys(L, w) >= 0) & (_keys(L, w) < L), _BATCH),
    (lambda L, w: _keys(L, w) < L, "the keys before the first token (i + t - w < 0) hold no key either"),
    (lambda L, w: _keys(L, w) >= 0, "the keys past the last token (i + t - w >= L) hold no key either"),
    (lambda L, w: (_keys(L, w) < 0) | (_keys(L, w) >= L),
     "True marks the cells that hold a key (True = keep), False the invalid corners"),
)
BAND_MASK = tuple(
    Suspect(lambda L, w, f=f, leading=leading: f(L, w)[None] if leading else f(L, w), cause)
    for leading in (False, True) for f, cause in _MASKS if not (leading and cause is _BATCH)
)

PREDICTED_BAND = 9, 3  # Exercise 9.3: L, w


def _band_for_9_expected() -> dict:
    L, w = PREDICTED_BAND
    band = band_scores(_labelled_scores(w, L)).masked_fill(~band_mask(L, w), 0)[0].long()  # [L, 2w + 1]
    return {"row_of_token_1": band[0].tolist(), "row_of_token_9": band[L - 1].tolist(),
            "masked_cells": int((~band_mask(L, w)).sum())}


def _band_for_9() -> Iterator[Case]:
    for key, value in _band_for_9_expected().items():
        yield Case(f'band_for_9["{key}"]', (key,), value, same_ints if isinstance(value, list) else same_int,
                   "band_scores and band_mask on labelled_qkv(9), w = 3")


def _band_for_9_suspect(key: str, value, cause: str) -> Suspect:
    return Suspect(lambda k: value if k == key else None, cause)


BAND_FOR_9 = (
    _band_for_9_suspect("row_of_token_1", [11, 12, 13, 14, 0, 0, 0],
                        "column t holds key i + t - w: token 1's first w columns are the keys before token 1, "
                        "which do not exist (0), and its own score 11 is in column w"),
    _band_for_9_suspect("row_of_token_9", [0, 0, 0, 96, 97, 98, 99],
                        "column t holds key i + t - w: token 9's own score 99 is in column w, and the columns "
                        "after it are the keys past token 9 (0)"),
    _band_for_9_suspect("masked_cells", 6,
                        "that is one corner: w(w + 1)/2 cells hang off each end of the band, both are masked"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 10: the softmax and P x V.


def _band_softmax() -> Iterator[Case]:
    for seed, (L, w) in enumerate([(8, 2), (12, 3), (6, 1)]):
        scores = randn(2, L, 2 * w + 1, seed=seed)
        padding = torch.rand(2, L, generator=generator(seed)) < 0.4
        padding[1, : 2 * w + 1] = True  # some rows of batch element 1 see no key at all
        for mask in (band_mask(L, w), band_mask(L, w, key_padding_mask=padding)):
            yield Case(f"band_softmax(scores, mask) with scores [2, {L}, {2 * w + 1}]"
                       f"{'' if mask.shape[0] == 1 else ' and padding keys'}", (scores, mask),
                       band_softmax(scores, mask), same_tensor(("batch", "query", "t"), exact=False))


def _lowest(scores: torch.Tensor) -> float:
    return torch.finfo(scores.dtype).min


BAND_SOFTMAX = (
    Suspect(lambda s, mask: s.masked_fill(~mask, float("-inf")).softmax(-1),
            "a row whose keys are all masked is all -inf, and its softmax is NaN: fill with a finite number "
            "and set the rows without a key to 0"),
    Suspect(lambda s, mask: s.masked_fill(~mask, 0.0).softmax(-1),
            "masked cells filled with 0 still weigh e^0: fill them with the most negative number (or -inf)"),
    Suspect(lambda s, mask: s.masked_fill(~mask, _lowest(s)).softmax(-1),
            "a row with no key at all gets equal weights on cells that hold no key: its probabilities must be 0"),
    Suspect(lambda s, mask: s.masked_fill(~mask, _lowest(s)).softmax(-2).masked_fill(~mask, 0.0),
            "the softmax runs along each band row, over the 2w + 1 offsets: dim=-1"),
)


def _unskew() -> Iterator[Case]:
    for seed, (shape, w) in enumerate([((2, 5), 2), ((3, 4, 3, 7), 3), ((1, 3), 1)]):
        rows = randn(*shape, seed=seed)
        yield Case(f"unskew(rows) with rows {list(shape)}, w = {w}", (rows,), unskew(rows),
                   same_tensor(("",) * (len(shape) - 2) + ("x", "y")))


def _rows_moved(rows: torch.Tensor, place) -> torch.Tensor:
    """Row x of ``rows`` [..., R, n] written from column place(x, R) of a [..., R, R + n - 1] zero tensor."""
    R, n = rows.shape[-2:]
    out = rows.new_zeros(*rows.shape[:-1], R + n - 1)
    for x in range(R):
        out[..., x, place(x, R) : place(x, R) + n] = rows[..., x, :]
    return out


UNSKEW = (
    Suspect(lambda rows: _rows_moved(rows, lambda x, R: 0),
            "every row kept in place: row x moves x places right, to column x + t"),
    Suspect(lambda rows: _rows_moved(rows, lambda x, R: R - 1 - x),
            "the rows moved the wrong way: the first row stays, row x moves x places right (a row stride one "
            "shorter, not one longer)"),
)


def _value_chunks() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 3), (2, 5, 1, 1)]):
        v = randn(BH, L, d, seed=seed)
        yield Case(f"value_chunks(v, w={w}) with v [B*H, L, d] = {[BH, L, d]}", (v, w), value_chunks(v, w),
                   same_tensor(("row", "block", "y", "component")))


VALUE_CHUNKS = (
    Suspect(lambda v, w: F.pad(v, (0, 0, 0, 2 * w)).unfold(1, 3 * w, w).transpose(-1, -2),
            "V needs w zero rows at both ends: block 0's keys start at -w, so value chunk 0 starts w rows "
            "before token 1"),
    Suspect(lambda v, w: F.pad(v, (0, 0, w, w)).unfold(1, 3 * w, w),
            "unfold puts the window last: transpose(-1, -2) to [B*H, L/w, 3w, d]"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 11: the whole layer.


def _causal_layer() -> Iterator[Case]:
    for seed, (B, L, H, d, w) in enumerate([(1, 8, 1, 2, 2), (2, 12, 3, 4, 2), (1, 24, 2, 8, 4), (2, 6, 1, 3, 3)]):
        q, k, v = randn(3, B, L, H, d, seed=seed)
        yield Case(f"causal_layer(q, k, v, w={w}) with [B, L, H, d] = {[B, L, H, d]}", (q, k, v, w),
                   dense_attention(q, k, v, (w, 0)), same_tensor(("batch", "query", "head", "component"), exact=False),
                   f"dense_attention(q, k, v, ({w}, 0))")


def _causal_without_corners(q, k, v, w):
    """The causal columns of the band kept, but not band_mask's: the corners' zeros weigh in."""
    B, L, H, d = q.shape
    qm, km, vm = (merge_heads(x) for x in (q, k, v))
    band = band_scores(chunk_scores(chunk(qm / d**0.5, w), chunk(km, w)))
    probs = band_softmax(band, (torch.arange(-w, w + 1) <= 0).expand(1, L, -1))
    return split_heads(band_times_values(probs, vm), B)


CAUSAL_LAYER = (
    Suspect(lambda q, k, v, w: dense_attention(q, k, v, (w, w)),
            "your output equals attention over the full window (w, w): did you mask the keys after the query? "
            "The causal window keeps the band's columns of offset -w .. 0"),
    Suspect(lambda q, k, v, w: dense_attention(q, k, v, (0, w)),
            "your output equals attention to the keys after the query, (0, w): the causal window keeps offsets "
            "-w .. 0, the columns 0 .. w of the band"),
    Suspect(lambda q, k, v, w: dense_attention(q, k, v, (w - 1, 0)),
            "one key short: the window (w, 0) holds w + 1 keys, offsets -w .. 0 (the query's own included)"),
    Suspect(lambda q, k, v, w: dense_attention(q, k, v, (w, 0), scale=1.0),
            "no scale: the default is 1 / sqrt(d), applied to q before the chunked product"),
    Suspect(_causal_without_corners,
            "the band's cells before the first token hold 0, not a key: combine your causal mask with "
            "band_mask(L, w)"),
)


def _chunked_multiply_adds_expected(L: int, w: int, d: int) -> int:
    """The multiply-adds of the two products at the padded length, read from the steps' tensors."""
    Lp = padded_length(L, w)
    x = torch.zeros(1, Lp, d)
    scores = chunk_scores(chunk(x, w), chunk(x, w))  # 1 x C x 2w x 2w, each entry a d-long dot product
    blocks = unskew(band_scores(scores).unflatten(1, (Lp // w, w)))  # 1 x L'/w x w x 3w, each times a d-row
    return (scores.numel() + blocks.numel()) * d


def _chunked_multiply_adds() -> Iterator[Case]:
    for w, d in itertools.product((1, 2, 3, 5), (1, 4)):
        for L in range(1, 10 * w + 1):
            yield Case(f"chunked_multiply_adds(L={L}, w={w}, d={d})", (L, w, d),
                       _chunked_multiply_adds_expected(L, w, d), same_int,
                       "the shapes of chunk_scores and unskew at the padded length")


def _multiply_adds(L: int, w: int, d: int, per_query: int, values: bool = True) -> int:
    return ((L // w - 1) * 4 * w * w + values * per_query * L) * d


CHUNKED_MULTIPLY_ADDS = (
    Suspect(lambda L, w, d: _multiply_adds(L, w, d, 3 * w) if L != padded_length(L, w) else None,
            "counted at L: the chunks and the value blocks run at the padded length L' = padded_length(L, w)"),
    Suspect(lambda L, w, d: _multiply_adds(padded_length(L, w), w, d, 0, values=False),
            "P x V forgotten: it multiplies L'/w blocks of w x 3w probabilities by 3w x d values"),
    Suspect(lambda L, w, d: _multiply_adds(padded_length(L, w), w, d, 2 * w + 1),
            "P x V multiplies blocks of w x 3w probabilities: 3w multiply-adds per query and unit of d, not the "
            "2w + 1 of the band"),
)

EXERCISES = [
    Exercise("chunk_scores", "07_chunked_product",
             "chunk_scores(q_chunks, k_chunks): the scores [B*H, C, 2w, 2w]",
             "swa_tutorial.chunk_scores", _chunk_scores, CHUNK_SCORES),
    Exercise("wasted_scores", "07_chunked_product",
             "wasted_scores(L, w): (repeats, outside, padding), the chunk scores computed in vain, any L",
             "a cell-by-cell count", _wasted_scores, WASTED_SCORES),
    Exercise("skew_chunk", "08_skew",
             "skew_chunk(m, w): chunk scores [..., 2w, 2w] in band layout [..., 2w, 2w + 1]",
             "swa_tutorial.steps.skewing", _skew_chunk, SKEW_CHUNK),
    Exercise("view_row_lengths", "08_skew",
             "view_row_lengths(w): how many numbers each row of the skew's view reads",
             "swa_tutorial.tutorial.figures.explorers.skew_stages", _view_row_lengths, VIEW_ROW_LENGTHS),
    Exercise("dense_to_band", "09_band",
             "dense_to_band(S, w): [..., L, L] -> [..., L, 2w + 1]",
             "swa_tutorial.dense_to_band", _dense_to_band, DENSE_TO_BAND),
    Exercise("band_mask", "09_band",
             "band_mask(L, w): bool [1, L, 2w + 1], True where key i + t - w exists",
             "swa_tutorial.band_mask", _band_mask, BAND_MASK),
    Exercise("band_for_9", "09_band",
             "band_for_9: predict band rows and the masked cells of the labelled example, L = 9, w = 3",
             "swa_tutorial.band_scores and band_mask", _band_for_9, BAND_FOR_9, prediction=True),
    Exercise("band_softmax", "10_softmax_pv",
             "band_softmax(scores, mask): the softmax of each row over its valid cells",
             "swa_tutorial.band_softmax", _band_softmax, BAND_SOFTMAX),
    Exercise("unskew", "10_softmax_pv",
             "unskew(rows): [..., w, 2w + 1] -> [..., w, 3w], row x shifted x places right",
             "swa_tutorial.unskew", _unskew, UNSKEW),
    Exercise("value_chunks", "10_softmax_pv",
             "value_chunks(v, w): [B*H, L, d] -> [B*H, L/w, 3w, d]",
             "swa_tutorial.value_chunks", _value_chunks, VALUE_CHUNKS),
    Exercise("causal_layer", "11_layer",
             "causal_layer(q, k, v, w): attention to keys i - w .. i, composed from the steps",
             "swa_tutorial.dense_attention", _causal_layer, CAUSAL_LAYER),
    Exercise("chunked_multiply_adds", "11_layer",
             "chunked_multiply_adds(L, w, d): the two chunked products' multiply-adds per head, any L",
             "the shapes of the steps' tensors", _chunked_multiply_adds, CHUNKED_MULTIPLY_ADDS),
]
