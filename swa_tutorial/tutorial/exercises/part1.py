"""The exercises of Part I (chapters 2 to 11): each one's cases, expected values from the package."""

from __future__ import annotations

import itertools
from typing import Iterator

import torch

from swa_tutorial.reference import dense_attention, dense_band_mask
from swa_tutorial.steps.band import band_mask, band_scores, band_softmax, dense_to_band
from swa_tutorial.steps.chunks import (
    chunk,
    chunk_scores,
    merge_heads,
    num_chunks,
    padded_length,
    split_heads,
)
from swa_tutorial.steps.labels import labelled_qkv
from swa_tutorial.steps.skewing import skew, unskew
from swa_tutorial.steps.values import value_chunks
from swa_tutorial.tutorial.exercises.framework import (
    Case,
    Compare,
    Exercise,
    generator,
    randn,
    same_int,
    same_ints,
    same_tensor,
)

# ---------------------------------------------------------------------------------------------
# The cases of each exercise, chapter by chapter. Expected values come from the package.


def _band_pairs() -> Iterator[Case]:
    for L in range(2, 25):
        for w in range(1, L):
            yield Case(f"band_pairs(L={L}, w={w})", (L, w), int(dense_band_mask(L, w).sum()), same_int,
                       f"dense_band_mask({L}, {w}).sum()")


def _dense_band_mask() -> Iterator[Case]:
    for L in range(1, 13):
        for w in range(1, L + 2):
            yield Case(f"dense_band_mask(L={L}, w={w})", (L, w), dense_band_mask(L, w),
                       same_tensor(("query", "key")))


def _attend_one_query() -> Iterator[Case]:
    for seed, (L, d, w) in enumerate([(1, 2, 1), (5, 3, 1), (9, 4, 2), (16, 8, 3), (7, 1, 20)]):
        q, k, v = randn(3, L, d, seed=seed)
        out = dense_attention(q[None, :, None], k[None, :, None], v[None, :, None], w)[0, :, 0]  # L x d
        for i in range(L):
            yield Case(f"attend_one_query(q, k, v, i={i}, w={w}) with q, k, v [{L}, {d}]", (q, k, v, i, w),
                       out[i], same_tensor(("component",), exact=False), "dense_attention")


def _num_chunks() -> Iterator[Case]:
    for w in range(1, 9):
        for L in range(2 * w, 16 * w + 1, w):
            yield Case(f"num_chunks(L={L}, w={w})", (L, w), num_chunks(L, w), same_int)


def _padded_length() -> Iterator[Case]:
    for w in range(1, 7):
        for L in range(1, 6 * w + 1):
            yield Case(f"padded_length(L={L}, w={w})", (L, w), padded_length(L, w), same_int)


def _chunked_indices(L: int, w: int) -> torch.Tensor:
    """The token indices each chunk holds, C x 2w: the chunk view of 0 .. L - 1."""
    indices = torch.arange(L, dtype=torch.float64)[None, :, None]  # [1, L, 1]
    return chunk(indices, w)[0, :, :, 0].long()


def _shared_chunk_compare(i: int, j: int, w: int, L: int) -> Compare:
    """The chunk got must exist and hold both tokens: read from the chunk view of the indices."""
    tokens = _chunked_indices(L, w)

    def compare(_expected, got) -> str | None:
        if isinstance(got, bool) or not isinstance(got, int):
            return f"got {got!r} ({type(got).__name__}), expected a chunk number (an int)"
        if not 0 <= got < len(tokens):
            return f"got chunk {got}, but there are only C = {len(tokens)} chunks, 0 .. {len(tokens) - 1}"
        held = tokens[got].tolist()
        missing = [t for t in (i, j) if t not in held]
        if missing:
            return f"got chunk {got}, which holds the indices {held[0]} .. {held[-1]}, not {missing[0]}"
        return None

    return compare


def _shared_chunk() -> Iterator[Case]:
    for w in range(1, 5):
        for L in (2 * w, 3 * w, 5 * w):
            for i, j in itertools.product(range(L), repeat=2):
                if abs(i - j) <= w:
                    yield Case(f"shared_chunk(i={i}, j={j}, w={w}, L={L})", (i, j, w, L), None,
                               _shared_chunk_compare(i, j, w, L), "chunk(arange(L), w)")


def _merge_heads() -> Iterator[Case]:
    for seed, (B, L, H, d) in enumerate([(1, 4, 1, 2), (2, 4, 3, 3), (3, 5, 2, 1), (2, 6, 4, 5)]):
        x = randn(B, L, H, d, seed=seed)
        yield Case(f"merge_heads(x) with x [B, L, H, d] = {[B, L, H, d]}", (x,), merge_heads(x),
                   same_tensor(("row", "token", "component")))


def _split_heads() -> Iterator[Case]:
    for seed, (B, L, H, d) in enumerate([(1, 4, 1, 2), (2, 4, 3, 3), (3, 5, 2, 1), (2, 6, 4, 5)]):
        x = randn(B * H, L, d, seed=seed)
        yield Case(f"split_heads(x, B={B}) with x [B*H, L, d] = {[B * H, L, d]}", (x, B), split_heads(x, B),
                   same_tensor(("batch", "token", "head", "component")))


def _chunk() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 2), (2, 12, 1, 3), (2, 10, 4, 5), (1, 4, 2, 1)]):
        x = randn(BH, L, d, seed=seed)
        yield Case(f"chunk(x, w={w}) with x [B*H, L, d] = {[BH, L, d]}", (x, w), chunk(x, w),
                   same_tensor(("row", "chunk", "x", "component"), view_of=x))


def _chunk_position() -> Iterator[Case]:
    for BH, L, d, w in [(1, 8, 2, 2), (2, 12, 3, 3), (3, 10, 1, 5)]:
        # each element holds its own position (exact in float64)
        storage = torch.arange(BH * L * d, dtype=torch.float64).reshape(BH, L, d)
        view = chunk(storage, w)
        for r, c, x, e in itertools.product(*(range(n) for n in view.shape)):
            yield Case(f"chunk_position(r={r}, c={c}, x={x}, e={e}, L={L}, d={d}, w={w})", (r, c, x, e, L, d, w),
                       int(view[r, c, x, e]), same_int, "chunk(arange(B*H*L*d).reshape(B*H, L, d), w)")


def _chunk_scores() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 2), (2, 15, 4, 3)]):
        q, k = randn(2, BH, L, d, seed=seed)
        qc, kc = chunk(q, w), chunk(k, w)
        yield Case(f"chunk_scores(q_chunks, k_chunks) with chunks [B*H, C, 2w, d] = {list(qc.shape)}", (qc, kc),
                   chunk_scores(qc, kc), same_tensor(("row", "chunk", "x", "y"), exact=False))


def _wasted_scores_expected(L: int, w: int) -> tuple[int, int]:
    """(repeats, outside), counted cell by cell over the chunks of the chunk view of the indices."""
    count = torch.zeros(L, L, dtype=torch.int64)
    for tokens in _chunked_indices(L, w):
        count[tokens[:, None], tokens[None, :]] += 1
    band = dense_band_mask(L, w)
    return int((count - 1).clamp(min=0)[band].sum()), int(count[~band].sum())


def _wasted_scores() -> Iterator[Case]:
    for w in range(1, 7):
        for L in range(2 * w, 12 * w + 1, w):
            yield Case(f"wasted_scores(L={L}, w={w})", (L, w), _wasted_scores_expected(L, w), same_ints,
                       "counting each chunk's cells in dense_band_mask")


def _labelled_scores(w: int, seq_len: int) -> torch.Tensor:
    """The chunk scores [1, C, 2w, 2w] of the labelled example (10 i + j)."""
    q, k, _ = labelled_qkv(seq_len)
    return chunk_scores(chunk(merge_heads(q), w), chunk(merge_heads(k), w))


def _skew_chunk() -> Iterator[Case]:
    inputs = [(_labelled_scores(2, 8), 2), (randn(2, 3, 6, 6, seed=0), 3), (randn(4, 2, 2, seed=1), 1)]
    for m, w in inputs:
        yield Case(f"skew_chunk(m, w={w}) with m {list(m.shape)}", (m, w), skew(m, -w, 2 * w + 1),
                   same_tensor(("",) * (m.dim() - 2) + ("x", "t"), exact=False), f"skew(m, -{w}, {2 * w + 1})")


def _view_row_lengths() -> Iterator[Case]:
    from swa_tutorial.tutorial.figures.explorers import (
        skew_stages,  # here, so that only this exercise needs matplotlib
    )

    for w in range(1, 7):
        lengths = [len(row) for row in skew_stages(0, w, seq_len=2 * w)["view"]]
        yield Case(f"view_row_lengths(w={w})", (w,), lengths, same_ints, "swa_tutorial.tutorial.figures.explorers.skew_stages")


def _dense_to_band() -> Iterator[Case]:
    for seed, (shape, w) in enumerate([((8, 8), 2), ((2, 5, 5), 1), ((3, 9, 9), 3), ((4, 4), 6)]):
        S = randn(*shape, seed=seed)
        yield Case(f"dense_to_band(S, w={w}) with S {list(shape)}", (S, w), dense_to_band(S, w),
                   same_tensor(("",) * (len(shape) - 2) + ("query", "t")))


def _band_mask() -> Iterator[Case]:
    for L in range(1, 13):
        for w in range(1, 7):
            yield Case(f"band_mask(L={L}, w={w})", (L, w), band_mask(L, w)[0], same_tensor(("query", "t")))


def _band_softmax() -> Iterator[Case]:
    for seed, (L, w) in enumerate([(8, 2), (12, 3), (6, 1)]):
        scores = randn(2, L, 2 * w + 1, seed=seed)
        padding = torch.rand(2, L, generator=generator(seed)) < 0.4
        padding[1, : 2 * w + 1] = True  # some rows of batch element 1 see no key at all
        for mask in (band_mask(L, w), band_mask(L, w, key_padding_mask=padding)):
            yield Case(f"band_softmax(scores, mask) with scores [2, {L}, {2 * w + 1}]"
                       f"{'' if mask.shape[0] == 1 else ' and padding keys'}", (scores, mask),
                       band_softmax(scores, mask), same_tensor(("batch", "query", "t"), exact=False))


def _unskew() -> Iterator[Case]:
    for seed, (shape, w) in enumerate([((2, 5), 2), ((3, 4, 3, 7), 3), ((1, 3), 1)]):
        rows = randn(*shape, seed=seed)
        yield Case(f"unskew(rows) with rows {list(shape)}, w = {w}", (rows,), unskew(rows),
                   same_tensor(("",) * (len(shape) - 2) + ("x", "y")))


def _value_chunks() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 3), (2, 5, 1, 1)]):
        v = randn(BH, L, d, seed=seed)
        yield Case(f"value_chunks(v, w={w}) with v [B*H, L, d] = {[BH, L, d]}", (v, w), value_chunks(v, w),
                   same_tensor(("row", "block", "y", "component")))


def _causal_layer() -> Iterator[Case]:
    for seed, (B, L, H, d, w) in enumerate([(1, 8, 1, 2, 2), (2, 12, 3, 4, 2), (1, 24, 2, 8, 4), (2, 6, 1, 3, 3)]):
        q, k, v = randn(3, B, L, H, d, seed=seed)
        yield Case(f"causal_layer(q, k, v, w={w}) with [B, L, H, d] = {[B, L, H, d]}", (q, k, v, w),
                   dense_attention(q, k, v, (w, 0)), same_tensor(("batch", "query", "head", "component"), exact=False),
                   f"dense_attention(q, k, v, ({w}, 0))")


def _chunked_multiply_adds_expected(L: int, w: int, d: int) -> int:
    """The multiply-adds of the two products, read from the shapes of the tensors the steps make."""
    x = torch.zeros(1, L, d)
    scores = chunk_scores(chunk(x, w), chunk(x, w))  # 1 x C x 2w x 2w, each entry a d-long dot product
    blocks = unskew(band_scores(scores).unflatten(1, (L // w, w)))  # 1 x L/w x w x 3w, each times a d-row
    return (scores.numel() + blocks.numel()) * d


def _chunked_multiply_adds() -> Iterator[Case]:
    for w, d in itertools.product((1, 2, 3, 5), (1, 4)):
        for L in range(2 * w, 10 * w + 1, w):
            yield Case(f"chunked_multiply_adds(L={L}, w={w}, d={d})", (L, w, d),
                       _chunked_multiply_adds_expected(L, w, d), same_int,
                       "the shapes of chunk_scores and unskew")


EXERCISES = [
    Exercise("band_pairs", "02_dense_and_band",
             "band_pairs(L, w): the number N of (query, key) pairs with |i - j| <= w, for 1 <= w < L",
             "swa_tutorial.dense_band_mask", _band_pairs),
    Exercise("dense_band_mask", "02_dense_and_band",
             "dense_band_mask(L, w): bool [L, L], True where |i - j| <= w",
             "swa_tutorial.dense_band_mask", _dense_band_mask),
    Exercise("attend_one_query", "03_loop",
             "attend_one_query(q, k, v, i, w): query i's output [d] for q, k, v [L, d], scale 1 / sqrt(d)",
             "swa_tutorial.dense_attention", _attend_one_query),
    Exercise("num_chunks", "04_chunks",
             "num_chunks(L, w): the number C of chunks, L a multiple of w and at least 2w",
             "swa_tutorial.num_chunks", _num_chunks),
    Exercise("padded_length", "04_chunks",
             "padded_length(L, w): the length L' the chunks run at",
             "swa_tutorial.padded_length", _padded_length),
    Exercise("shared_chunk", "04_chunks",
             "shared_chunk(i, j, w, L): a chunk holding both query i and key j, |i - j| <= w",
             "the chunk view of the indices", _shared_chunk),
    Exercise("merge_heads", "05_reshape",
             "merge_heads(x): [B, L, H, d] -> [B*H, L, d]",
             "swa_tutorial.merge_heads", _merge_heads),
    Exercise("split_heads", "05_reshape",
             "split_heads(x, B): [B*H, L, d] -> [B, L, H, d]",
             "swa_tutorial.split_heads", _split_heads),
    Exercise("chunk", "06_chunk_view",
             "chunk(x, w): the chunk view [B*H, C, 2w, d] of a contiguous x, no copy",
             "swa_tutorial.chunk", _chunk),
    Exercise("chunk_position", "06_chunk_view",
             "chunk_position(r, c, x, e, L, d, w): the storage position of a chunk view element",
             "swa_tutorial.chunk", _chunk_position),
    Exercise("chunk_scores", "07_chunked_product",
             "chunk_scores(q_chunks, k_chunks): the scores [B*H, C, 2w, 2w]",
             "swa_tutorial.chunk_scores", _chunk_scores),
    Exercise("wasted_scores", "07_chunked_product",
             "wasted_scores(L, w): (repeats, outside), the chunk scores computed in vain",
             "a cell-by-cell count", _wasted_scores),
    Exercise("skew_chunk", "08_skew",
             "skew_chunk(m, w): chunk scores [..., 2w, 2w] in band layout [..., 2w, 2w + 1]",
             "swa_tutorial.steps.skewing", _skew_chunk),
    Exercise("view_row_lengths", "08_skew",
             "view_row_lengths(w): how many numbers each row of the skew's view reads",
             "swa_tutorial.tutorial.figures.explorers.skew_stages", _view_row_lengths),
    Exercise("dense_to_band", "09_band",
             "dense_to_band(S, w): [..., L, L] -> [..., L, 2w + 1]",
             "swa_tutorial.dense_to_band", _dense_to_band),
    Exercise("band_mask", "09_band",
             "band_mask(L, w): bool [L, 2w + 1], True where key i + t - w exists",
             "swa_tutorial.band_mask", _band_mask),
    Exercise("band_softmax", "10_softmax_pv",
             "band_softmax(scores, mask): the softmax of each row over its valid cells",
             "swa_tutorial.band_softmax", _band_softmax),
    Exercise("unskew", "10_softmax_pv",
             "unskew(rows): [..., w, 2w + 1] -> [..., w, 3w], row x shifted x places right",
             "swa_tutorial.unskew", _unskew),
    Exercise("value_chunks", "10_softmax_pv",
             "value_chunks(v, w): [B*H, L, d] -> [B*H, L/w, 3w, d]",
             "swa_tutorial.value_chunks", _value_chunks),
    Exercise("causal_layer", "11_layer",
             "causal_layer(q, k, v, w): attention to keys i - w .. i, composed from the steps",
             "swa_tutorial.dense_attention", _causal_layer),
    Exercise("chunked_multiply_adds", "11_layer",
             "chunked_multiply_adds(L, w, d): the two chunked products' multiply-adds per head",
             "the shapes of the steps' tensors", _chunked_multiply_adds),
]
