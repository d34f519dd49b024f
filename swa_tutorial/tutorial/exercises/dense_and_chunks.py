"""The exercises of chapters 2 to 6: the band, the loop, the chunks, the reshape and the chunk view.

Each exercise's cases take their expected values from the package; its suspects are the typical
wrong computations, each with the mistake that gives it (see :mod:`.framework`).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch
import torch.nn.functional as F

from swa_tutorial.core.windows import key_offsets
from swa_tutorial.reference import dense_attention, dense_band_mask
from swa_tutorial.steps.chunks import (
    chunk,
    merge_heads,
    num_chunks,
    padded_length,
    split_heads,
)
from swa_tutorial.tutorial.exercises.framework import (
    Case,
    Compare,
    Exercise,
    Suspect,
    randn,
    same_int,
    same_ints,
    same_tensor,
)

# ---------------------------------------------------------------------------------------------
# Chapter 2: the band.


def _window_pairs() -> Iterator[Case]:
    for L in range(1, 17):
        for left, right in itertools.product(range(L), repeat=2):
            yield Case(f"window_pairs(L={L}, left={left}, right={right})", (L, left, right),
                       int(dense_band_mask(L, (left, right)).sum()), same_int,
                       f"dense_band_mask({L}, ({left}, {right})).sum()")


_CORNERS = ("a corner of side s holds 1 + 2 + ... + s = s (s + 1) / 2 cells: the query nearest the end misses s "
            "keys, the next s - 1, ...")
WINDOW_PAIRS = (
    Suspect(lambda L, left, right: L * (left + right + 1),
            "every row counted with left + right + 1 keys: the rows near the ends lose the corners that hang "
            "off the matrix, left (left + 1) / 2 cells at the start and right (right + 1) / 2 at the end"),
    Suspect(lambda L, left, right: L * (left + right + 1) - left * (left + 1),
            "both corners taken as large as the left one: the corner at the end has side right"),
    Suspect(lambda L, left, right: L * (left + right + 1) - (left * left + right * right) // 2, _CORNERS),
    Suspect(lambda L, left, right: L * (left + right + 1) - (left * (left - 1) + right * (right - 1)) // 2,
            _CORNERS),
)


def _dense_band_mask() -> Iterator[Case]:
    for L in range(1, 13):
        for w in range(1, L + 2):
            yield Case(f"dense_band_mask(L={L}, w={w})", (L, w), dense_band_mask(L, w),
                       same_tensor(("query", "key")))


DENSE_BAND_MASK = (
    Suspect(lambda L, w: key_offsets(L).abs() < w, "|i - j| < w: the keys exactly w away belong to the band too"),
    Suspect(lambda L, w: key_offsets(L) <= w, "only j - i <= w: the band has two sides, |i - j| <= w"),
    Suspect(lambda L, w: key_offsets(L) >= -w, "only i - j <= w: the band has two sides, |i - j| <= w"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 3: the loop.

_ONE_QUERY_SHAPES = [(1, 2, 1), (5, 3, 1), (9, 4, 2), (16, 8, 3), (7, 1, 20)]  # L, d, w


def _as_one_sequence(x: torch.Tensor) -> torch.Tensor:
    return x[None, :, None]  # [L, d] -> [1, L, 1, d]


def _reference(q, k, v, w, scale=None) -> torch.Tensor:
    """dense_attention on [L, d] inputs, one sequence and one head: [L, d]."""
    return dense_attention(*map(_as_one_sequence, (q, k, v)), w, scale=scale)[0, :, 0]


def _attend_one_query() -> Iterator[Case]:
    for seed, (L, d, w) in enumerate(_ONE_QUERY_SHAPES):
        q, k, v = randn(3, L, d, seed=seed)
        out = _reference(q, k, v, w)
        for i in range(L):
            yield Case(f"attend_one_query(q, k, v, i={i}, w={w}) with q, k, v [{L}, {d}]", (q, k, v, i, w),
                       out[i], same_tensor(("component",), exact=False), "dense_attention")


def _one_query(q, k, v, i, lo, hi, scale):
    return (k[lo:hi] @ q[i] * scale).softmax(0) @ v[lo:hi]


_UNSCALED = "no scale: the scores are q . k / sqrt(d)"
ATTEND_ONE_QUERY = (
    Suspect(lambda q, k, v, i, w: _one_query(q, k, v, i, max(0, i - w), i + w + 1, 1.0), _UNSCALED),
    Suspect(lambda q, k, v, i, w: _one_query(q, k, v, i, max(0, i - w), i + w + 1, q.shape[1] ** 0.5),
            "the scores multiplied by sqrt(d): the scale divides, q . k / sqrt(d)"),
    Suspect(lambda q, k, v, i, w: _one_query(q, k, v, i, max(0, i - w), i + w, q.shape[1] ** -0.5),
            "a slice stops before its end: the last key i + w needs k[lo : i + w + 1]"),
    Suspect(lambda q, k, v, i, w: _one_query(q, k, v, i, i - w, i + w + 1, q.shape[1] ** -0.5) if i < w else None,
            "a negative start counts from the end in Python: the first key is max(0, i - w)"),
)


def _gathered_attention() -> Iterator[Case]:
    for seed, (L, d, w) in enumerate(_ONE_QUERY_SHAPES):
        q, k, v = randn(3, L, d, seed=seed)
        yield Case(f"gathered_attention(q, k, v, w={w}) with q, k, v [{L}, {d}]", (q, k, v, w),
                   _reference(q, k, v, w), same_tensor(("query", "component"), exact=False), "dense_attention")


def _gathered_unmasked(q, k, v, w, scale):
    """Every query against its 2w + 1 gathered keys, the zero rows of the padding included."""
    keys, values = (F.pad(x, (0, 0, w, w)).unfold(0, 2 * w + 1, 1) for x in (k, v))  # L x d x (2w + 1)
    probs = (torch.einsum("id,idt->it", q, keys) * scale).softmax(-1)
    return torch.einsum("it,idt->id", probs, values)


GATHERED_ATTENTION = (
    Suspect(lambda q, k, v, w: _gathered_unmasked(q, k, v, w, q.shape[1] ** -0.5),
            "the zero rows padding K score 0 and still get weight e^0 in the softmax: mask the cells whose key "
            "i + t - w lies outside 0 .. L - 1 (as band_mask does) before it"),
    Suspect(lambda q, k, v, w: _reference(q, k, v, w, scale=1.0), _UNSCALED),
)

# ---------------------------------------------------------------------------------------------
# Chapter 4: the chunks.

PREDICTED_L, PREDICTED_W = 600, 256  # Exercise 4.1: a length that w does not divide


def _chunks_for_600_expected() -> dict:
    L, w = PREDICTED_L, PREDICTED_W
    padded = padded_length(L, w)
    chunks = num_chunks(padded, w)
    return {"padded_length": padded, "num_chunks": chunks, "computed_scores": chunks * (2 * w) ** 2}


def _chunks_for_600() -> Iterator[Case]:
    sources = {"padded_length": f"padded_length({PREDICTED_L}, {PREDICTED_W})",
               "num_chunks": "num_chunks(padded_length(600, 256), 256)",
               "computed_scores": "the shape of chunk_scores: C x 2w x 2w"}
    for key, value in _chunks_for_600_expected().items():
        yield Case(f'chunks_for_600["{key}"]', (key,), value, same_int, sources[key])


def _chunks_for_600_suspect(key: str):
    L, w = PREDICTED_L, PREDICTED_W
    wrong = {
        "padded_length": {1024: "1024 is Longformer's own length, a multiple of 2w = 512: the chunks need only a "
                                "multiple of w = 256, since a chunk starts every w tokens",
                          600: "600 is not a multiple of w = 256, and the chunks step by w: L is padded up",
                          512: "rounded down: padding adds tokens, L' >= L"},
        "num_chunks": {L // w - 1: "C = L'/w - 1 at the padded length L' = 768, not at L = 600",
                       3: "L'/w = 3 counts blocks of w tokens; the chunks, two blocks long, are one fewer"},
        "computed_scores": {L * (2 * w + 1) - w * (w + 1): "that is the useful N = L(2w + 1) - w(w + 1); the "
                                                           "chunks compute C (2w)^2 scores",
                            3 * (2 * w) ** 2: "three chunks: C = L'/w - 1 = 2"},
    }[key]
    return wrong


CHUNKS_FOR_600 = tuple(
    Suspect(lambda key, value=value, k=k: value if key == k else None, cause)
    for k in ("padded_length", "num_chunks", "computed_scores")
    for value, cause in _chunks_for_600_suspect(k).items()
)


def _padded_length() -> Iterator[Case]:
    for w in range(1, 7):
        for L in range(1, 6 * w + 1):
            yield Case(f"padded_length(L={L}, w={w})", (L, w), padded_length(L, w), same_int)


PADDED_LENGTH = (
    Suspect(lambda L, w: max(2 * w, -(-L // (2 * w)) * 2 * w),
            "a multiple of 2w, Longformer's rule: a chunk starts every w tokens, so a multiple of w is enough"),
    Suspect(lambda L, w: -(-L // w) * w, "a sequence shorter than 2w still needs one whole chunk: L' >= 2w"),
    Suspect(lambda L, w: max(2 * w, L // w * w), "rounded down: L' must be at least L"),
    Suspect(lambda L, w: max(2 * w, (L // w + 1) * w), "a whole block added even when w divides L"),
)


def chunked_indices(L: int, w: int) -> torch.Tensor:
    """The token indices each chunk holds, C x 2w: the chunk view of 0 .. L - 1."""
    indices = torch.arange(L, dtype=torch.float64)[None, :, None]  # [1, L, 1]
    return chunk(indices, w)[0, :, :, 0].long()


def _shared_chunk_compare(i: int, j: int, w: int, L: int) -> Compare:
    """The chunk got must exist and hold both tokens: read from the chunk view of the indices."""
    tokens = chunked_indices(L, w)

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


SHARED_CHUNK = (
    Suspect(lambda i, j, w, L: min(i, j) // w if min(i, j) >= L - w else None,
            "min(i, j) // w is chunk C for the last w tokens, and there is no chunk C: the proof's exception, "
            "the last chunk C - 1 holds them"),
    Suspect(lambda i, j, w, L: i // w if i // w < L // w - 1 and j < i // w * w else None,
            "the chunk of the query's block: a key before that block lies in the chunk before, min(i, j) // w"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 5: the reshape.

_HEAD_SHAPES = [(1, 4, 1, 2), (2, 4, 3, 3), (3, 5, 2, 1), (2, 6, 4, 5)]  # B, L, H, d


def _merge_heads() -> Iterator[Case]:
    for seed, (B, L, H, d) in enumerate(_HEAD_SHAPES):
        x = randn(B, L, H, d, seed=seed)
        yield Case(f"merge_heads(x) with x [B, L, H, d] = {[B, L, H, d]}", (x,), merge_heads(x),
                   same_tensor(("row", "token", "component")))


MERGE_HEADS = (
    Suspect(lambda x: x.reshape(x.shape[0] * x.shape[2], x.shape[1], x.shape[3]),
            "[B, L, H, d] reshaped without moving H before L: each row mixes the tokens of several heads; "
            "transpose(1, 2) first"),
    Suspect(lambda x: x.permute(2, 0, 1, 3).reshape(x.shape[0] * x.shape[2], x.shape[1], x.shape[3]),
            "rows ordered h B + b (heads first): row b H + h is head h of batch element b"),
)


def _split_heads() -> Iterator[Case]:
    for seed, (B, L, H, d) in enumerate(_HEAD_SHAPES):
        x = randn(B * H, L, d, seed=seed)
        yield Case(f"split_heads(x, B={B}) with x [B*H, L, d] = {[B * H, L, d]}", (x, B), split_heads(x, B),
                   same_tensor(("batch", "token", "head", "component")))


SPLIT_HEADS = (
    Suspect(lambda x, B: x.reshape(B, x.shape[1], x.shape[0] // B, x.shape[2]),
            "[B*H, L, d] reshaped straight to [B, L, H, d]: split the rows into [B, H, L, d] first, then "
            "transpose heads and tokens"),
    Suspect(lambda x, B: x.reshape(x.shape[0] // B, B, *x.shape[1:]).permute(1, 2, 0, 3),
            "rows read as h B + b: merge_heads orders them b H + h"),
)

PREDICTED_SHAPE = (2, 4, 3, 5)  # Exercise 5.3: x [B, L, H, d]


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _layouts_expected() -> dict:
    B, L, H, d = PREDICTED_SHAPE
    x = torch.zeros(B, L, H, d)
    one_head = torch.zeros(B, L, 1, d)
    merged = merge_heads(x)
    return {"merged_strides": merged.stride(), "merged_shares_memory": _same_memory(merged, x),
            "split_strides": split_heads(merged, B).stride(),
            "one_head_shares_memory": _same_memory(merge_heads(one_head), one_head)}


def _same_bool(expected, got) -> str | None:
    if not isinstance(got, bool):
        return f"got {got!r} ({type(got).__name__}), expected True or False"
    return None if got == expected else f"got {got}, expected {expected}"


def _reshape_predictions() -> Iterator[Case]:
    for key, value in _layouts_expected().items():
        compare = _same_bool if isinstance(value, bool) else same_ints
        yield Case(f'reshape_predictions["{key}"]', (key,), value, compare,
                   "merge_heads and split_heads on x = torch.zeros(2, 4, 3, 5)")


def _reshape_suspect(key: str, value, cause: str) -> Suspect:
    return Suspect(lambda k: value if k == key else None, cause)


B_, L_, H_, d_ = PREDICTED_SHAPE
_TRANSPOSE = ("split_heads ends with transpose(1, 2), a view that swaps the strides of tokens and heads: "
              "(H L d, d, L d, 1)")
RESHAPE_PREDICTIONS = (
    _reshape_suspect("merged_shares_memory", True,
                     "with H > 1 the merge reorders the elements (heads before tokens), which no single row "
                     "stride can describe: reshape copies"),
    _reshape_suspect("merged_strides", (L_ * H_ * d_, H_ * d_, 1),
                     "those are x's strides of batch and token: the merge copies into a fresh contiguous tensor, "
                     "strides (L d, d, 1)"),
    _reshape_suspect("split_strides", (H_ * L_ * d_, L_ * d_, d_, 1), f"the strides before the transpose: {_TRANSPOSE}"),
    _reshape_suspect("split_strides", (L_ * H_ * d_, H_ * d_, d_, 1),
                     f"a contiguous [B, L, H, d] would have these, but nothing is copied back: {_TRANSPOSE}"),
    _reshape_suspect("one_head_shares_memory", False,
                     "moving a dimension of size 1 moves no element: with one head the merge is a view"),
)

# ---------------------------------------------------------------------------------------------
# Chapter 6: the chunk view.

_CHUNK_SHAPES = [(1, 8, 2, 2), (3, 12, 3, 2), (2, 12, 1, 3), (2, 10, 4, 5), (1, 4, 2, 1)]  # BH, L, d, w


def _chunk() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate(_CHUNK_SHAPES):
        x = randn(BH, L, d, seed=seed)
        yield Case(f"chunk(x, w={w}) with x [B*H, L, d] = {[BH, L, d]}", (x, w), chunk(x, w),
                   same_tensor(("row", "chunk", "x", "component"), view_of=x))


def _without_overlap(x: torch.Tensor, w: int) -> torch.Tensor:
    BH, L, d = x.shape
    return x.reshape(BH, L // (2 * w), 2 * w, d)


CHUNK = (
    Suspect(_without_overlap, "chunks of 2w that do not overlap: a chunk starts every w tokens, so there are "
                              "C = L/w - 1 of them"),
    Suspect(lambda x, w: x.unfold(1, 2 * w, w), "unfold puts the window last: transpose(-1, -2) to [B*H, C, 2w, d]"),
)


def _strided_inputs() -> Iterator[tuple[str, torch.Tensor, int]]:
    """Tensors [B*H, L, d] of every kind of strides, with a window: (how it was made, x, w)."""
    yield "randn(2, 8, 3)", randn(2, 8, 3, seed=0), 2
    yield "randn(2, 3, 8).transpose(1, 2)", randn(2, 3, 8, seed=1).transpose(1, 2), 2
    yield "randn(2, 24, 2)[:, ::2] (every other token)", randn(2, 24, 2, seed=2)[:, ::2], 3
    yield "randn(2, 13, 4)[:, 3:] (from token 3 on)", randn(2, 13, 4, seed=3)[:, 3:], 5
    yield "randn(10, 3, 2).transpose(0, 1)", randn(10, 3, 2, seed=4).transpose(0, 1), 1


def _chunk_any_strides() -> Iterator[Case]:
    for made, x, w in _strided_inputs():
        yield Case(f"chunk_any_strides(x, w={w}) with x [B*H, L, d] = {list(x.shape)}, x = {made}", (x, w),
                   chunk(x, w), same_tensor(("row", "chunk", "x", "component"), view_of=x))


def _chunk_strides_assumed(x: torch.Tensor, w: int, strides, offset: int) -> torch.Tensor:
    BH, L, d = x.shape
    return x.as_strided((BH, L // w - 1, 2 * w, d), strides, offset)


CHUNK_ANY_STRIDES = (
    Suspect(lambda x, w: _chunk_strides_assumed(x, w, (x.shape[1] * x.shape[2], w * x.shape[2], x.shape[2], 1),
                                                x.storage_offset()),
            "the strides of a contiguous x, (L d, w d, d, 1): take them from x.stride(), (s0, w s1, s1, s2)"),
    Suspect(lambda x, w: _chunk_strides_assumed(x, w, (x.stride(0), w * x.stride(1), *x.stride()[1:]), 0),
            "as_strided counts from the start of the storage: a view that starts inside it needs "
            "x.storage_offset()"),
)

EXERCISES = [
    Exercise("window_pairs", "02_dense_and_band",
             "window_pairs(L, left, right): the (query, key) pairs with i - left <= j <= i + right",
             "swa_tutorial.dense_band_mask", _window_pairs, WINDOW_PAIRS),
    Exercise("dense_band_mask", "02_dense_and_band",
             "dense_band_mask(L, w): bool [L, L], True where |i - j| <= w",
             "swa_tutorial.dense_band_mask", _dense_band_mask, DENSE_BAND_MASK),
    Exercise("attend_one_query", "03_loop",
             "attend_one_query(q, k, v, i, w): query i's output [d] for q, k, v [L, d], scale 1 / sqrt(d)",
             "swa_tutorial.dense_attention", _attend_one_query, ATTEND_ONE_QUERY),
    Exercise("gathered_attention", "03_loop",
             "gathered_attention(q, k, v, w): every query at once against its 2w + 1 gathered keys, [L, d]",
             "swa_tutorial.dense_attention", _gathered_attention, GATHERED_ATTENTION),
    Exercise("chunks_for_600", "04_chunks",
             "chunks_for_600: predict L', C and the scores computed for L = 600, w = 256",
             "swa_tutorial.padded_length and num_chunks", _chunks_for_600, CHUNKS_FOR_600, prediction=True),
    Exercise("padded_length", "04_chunks",
             "padded_length(L, w): the length L' the chunks run at",
             "swa_tutorial.padded_length", _padded_length, PADDED_LENGTH),
    Exercise("shared_chunk", "04_chunks",
             "shared_chunk(i, j, w, L): a chunk holding both query i and key j, |i - j| <= w",
             "the chunk view of the indices", _shared_chunk, SHARED_CHUNK),
    Exercise("merge_heads", "05_reshape",
             "merge_heads(x): [B, L, H, d] -> [B*H, L, d]",
             "swa_tutorial.merge_heads", _merge_heads, MERGE_HEADS),
    Exercise("split_heads", "05_reshape",
             "split_heads(x, B): [B*H, L, d] -> [B, L, H, d]",
             "swa_tutorial.split_heads", _split_heads, SPLIT_HEADS),
    Exercise("reshape_predictions", "05_reshape",
             "reshape_predictions: predict the strides and copies of merge_heads and split_heads",
             "swa_tutorial.merge_heads and split_heads", _reshape_predictions, RESHAPE_PREDICTIONS,
             prediction=True),
    Exercise("chunk", "06_chunk_view",
             "chunk(x, w): the chunk view [B*H, C, 2w, d] of a contiguous x, no copy",
             "swa_tutorial.chunk", _chunk, CHUNK),
    Exercise("chunk_any_strides", "06_chunk_view",
             "chunk_any_strides(x, w): the chunk view of x [B*H, L, d] whatever its strides, no copy",
             "swa_tutorial.chunk", _chunk_any_strides, CHUNK_ANY_STRIDES),
]
