"""The exercises: every check accepts the book's solution, and says exactly what is wrong with
the empty function of the exercise cell and with the typical wrong answers below.

The solutions are not copied here: they are read from the chapters' cells tagged ``solution``
and run, so the solution a reader unfolds is the one tested.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import nbformat
import pytest
import torch
import torch.nn.functional as F

from swa_tutorial import dense_band_mask, dense_to_band
from swa_tutorial.tutorial import exercises
from swa_tutorial.tutorial.exercises.framework import WIDTH, likely_cause
from swa_tutorial.tutorial.exercises import EXERCISES, check, diagnose

BOOK = pathlib.Path(__file__).resolve().parent.parent / "book"


def tagged_cells(chapter: str, tag: str) -> list[str]:
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    return [c.source for c in nb.cells if tag in c.metadata.get("tags", [])]


def cell_of(name: str, tag: str) -> str:
    """The one cell tagged ``tag`` in the exercise's chapter that checks exercise ``name``."""
    cells = [s for s in tagged_cells(EXERCISES[name].chapter, tag) if f'check("{name}", {name})' in s]
    assert len(cells) == 1, f"{EXERCISES[name].chapter}: {len(cells)} cells tagged {tag} check {name}"
    return cells[0]


def defined(name: str, *sources: str):
    """Run cells (their output swallowed) and return the function ``name`` they define."""
    namespace = {"torch": torch, "F": F, "check": check}  # what the chapter imported before
    with contextlib.redirect_stdout(io.StringIO()):
        for source in sources:
            exec(source, namespace)  # noqa: S102  (the book's own cells)
    return namespace[name]


def first_call(name: str) -> str:
    return next(iter(EXERCISES[name].cases())).call


CHAPTERS = [f.stem for f in sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))]
WITHOUT_EXERCISES = {"01_preface", "19_benchmarks"}  # the preface, and measurements to read


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if c not in WITHOUT_EXERCISES])
def test_every_chapter_from_2_on_has_one_to_three_exercises(chapter):
    names = [e.name for e in EXERCISES.values() if e.chapter == chapter]
    assert 1 <= len(names) <= 3, (chapter, names)
    assert len(tagged_cells(chapter, "exercise")) == len(tagged_cells(chapter, "solution")) == len(names)


@pytest.mark.parametrize("name", EXERCISES)
def test_the_solution_in_the_book_is_right(name):
    answer = defined(name, cell_of(name, "exercise"), cell_of(name, "solution"))
    assert diagnose(name, answer) is None


@pytest.mark.parametrize("name", EXERCISES)
def test_the_empty_exercise_is_reported_as_not_written(name):
    stub = defined(name, cell_of(name, "exercise"))
    if EXERCISES[name].prediction:
        expected = f"{first_call(name)} is ...: fill in your prediction (in place of the ...)"
    else:
        expected = f"{first_call(name)} returned None: fill in the function body (in place of the ...)"
    assert diagnose(name, stub) == expected


@pytest.mark.parametrize("name", EXERCISES)
def test_solutions_are_folded_and_exercises_are_not(name):
    nb = nbformat.read(BOOK / f"{EXERCISES[name].chapter}.ipynb", as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if f'check("{name}", {name})' in cell.source:
            assert ("hide-input" in tags) == ("solution" in tags), (name, tags)


# Typical wrong answers and what check must say about each: the exact message where the numbers
# are small enough to derive by hand, else its beginning (the call and the first wrong entry).


def window_pairs_without_corners(L, left, right):
    return L * (left + right + 1)  # forgets the corners at both ends


def gathered_without_the_mask(q, k, v, w):
    L, d = q.shape
    keys, values = (F.pad(x, (0, 0, w, w)).unfold(0, 2 * w + 1, 1) for x in (k, v))
    scores = torch.einsum("id,idt->it", q, keys) / d**0.5  # the padding rows' scores not masked
    return torch.einsum("it,idt->id", scores.softmax(-1), values)


def strict_band(L, w):
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    return (i - j).abs() < w


def int_band(L, w):
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    return ((i - j).abs() <= w).int()


def unscaled_query(q, k, v, i, w):
    lo, hi = max(0, i - w), min(len(q), i + w + 1)
    return (k[lo:hi] @ q[i]).softmax(0) @ v[lo:hi]


def one_key_short(q, k, v, i, w):
    lo, hi = max(0, i - w), min(len(q), i + w)  # misses key i + w
    return (k[lo:hi] @ q[i] / q.shape[1] ** 0.5).softmax(0) @ v[lo:hi]


def chunk_assuming_contiguous(x, w):
    BH, L, d = x.shape
    return x.as_strided((BH, L // w - 1, 2 * w, d), (L * d, w * d, d, 1), x.storage_offset())


def wasted_at_the_padded_length(L, w):
    Lp = max(2 * w, -(-L // w) * w)  # the chapter's formulas at L', padding counted as real
    C = Lp // w - 1
    return (C - 1) * w * w, C * w * (w - 1), 0


def chunk_copy(x, w):
    return x.unfold(1, 2 * w, w).transpose(-1, -2).contiguous()


def chunks_without_overlap(x, w):
    BH, L, d = x.shape
    return x.reshape(BH, L // (2 * w), 2 * w, d)


def skew_stride_not_longer(m, w):
    padded = F.pad(m, (w, w))
    return padded.as_strided((*padded.shape[:-1], 2 * w + 1), (*padded.stride()[:-2], 4 * w, 1))


def softmax_with_nan_rows(scores, mask):
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def values_padded_at_the_end(v, w):
    return F.pad(v, (0, 0, 0, 2 * w)).unfold(1, 3 * w, w).transpose(-1, -2)


def symmetric_layer(q, k, v, w):
    from swa_tutorial import (band_mask, band_scores, band_softmax, band_times_values, chunk, chunk_scores, merge_heads,
                              split_heads)

    B, L, H, d = q.shape
    qm, km, vm = (merge_heads(x) for x in (q, k, v))
    band = band_scores(chunk_scores(chunk(qm / d**0.5, w), chunk(km, w)))
    return split_heads(band_times_values(band_softmax(band, band_mask(L, w)), vm), B)  # sees the future too


def online_step_without_rescale(row_max, row_sum, acc, scores, values):
    new_max = torch.maximum(row_max, scores.amax(dim=1))
    shift = torch.where(new_max == float("-inf"), 0.0, new_max)
    p = torch.exp(scores - shift[:, None])
    return new_max, row_sum + p.sum(dim=1), acc + p @ values  # l and acc kept relative to the old maximum


def online_step_unguarded(row_max, row_sum, acc, scores, values):
    new_max = torch.maximum(row_max, scores.amax(dim=1))
    p = torch.exp(scores - new_max[:, None])
    rescale = torch.exp(row_max - new_max)
    return new_max, rescale * row_sum + p.sum(dim=1), rescale[:, None] * acc + p @ values


def tile_kind_without_the_end(I, J, L, left, right, T_q, T_k):
    queries = range(I * T_q, min((I + 1) * T_q, L))
    seen = [i - left <= j <= i + right for i in queries for j in range(J * T_k, (J + 1) * T_k)]  # j < L forgotten
    return "full" if all(seen) else "partial" if any(seen) else "skipped"


def tile_backward_without_the_lse_gradient(q, k, v, allowed, out, lse, grad_out, grad_lse, scale):
    p = torch.exp(scale * q @ k.T - lse[:, None]).masked_fill(~allowed, 0.0)
    ds = p * (grad_out @ v.T - (grad_out * out).sum(dim=1)[:, None])  # D without - grad_lse
    return scale * ds @ k, scale * ds.T @ q, p.T @ grad_out


def attend_the_whole_sequence(q, k, v, window, d):
    from swa_tutorial import sliding_window_attention

    return sliding_window_attention(q, k, v, window)  # the ordinary window: neighbours of every class


def newest_tokens_in_order(T, left):
    return (list(range(max(0, T - left - 1), T)) + [-1] * (left + 1))[: left + 1]  # not slot t mod (left + 1)


def decode_step_unmasked(q, keys, values, positions):
    return (keys @ q / q.shape[0] ** 0.5).softmax(dim=0) @ values  # the empty slots' zero keys get weight


def neighbours_send_whole_windows(lengths, window, token_bytes):
    left, right = window  # as if every shard were longer than the window
    last = len(lengths) - 1
    return [((right if r > 0 else 0) + (left if r < last else 0)) * token_bytes for r in range(last + 1)]


def merge_without_the_max(out1, lse1, out2, lse2):
    e1, e2 = lse1.exp()[:, None], lse2.exp()[:, None]
    return (e1 * out1 + e2 * out2) / (e1 + e2)


WRONG = [
    ("window_pairs", window_pairs_without_corners,  # L = 2, (0, 1): 2 rows of 2 cells, 1 of them missing
     "window_pairs(L=2, left=0, right=1): got 4, expected 3 (expected from dense_band_mask(2, (0, 1)).sum()). "
     "Likely cause: every row counted with left + right + 1 keys: the rows near the ends lose the corners"),
    ("dense_band_mask", strict_band,  # L = 2, w = 1: only the diagonal is kept, 2 of 4 cells lost
     "dense_band_mask(L=2, w=1): entry [query 0, key 1]: got False, expected True (2 of 4 entries differ). "
     "Likely cause: |i - j| < w: the keys exactly w away belong to the band too"),
    ("dense_band_mask", int_band, "dense_band_mask(L=1, w=1): got dtype torch.int32, expected torch.bool"),
    ("attend_one_query", unscaled_query,  # one key alone has weight 1 whatever the scale: case 2 fails
     "attend_one_query(q, k, v, i=0, w=1) with q, k, v [5, 3]: entry [component 0]: got "),
    ("attend_one_query", one_key_short,  # query 0 of a 1-token sequence has no key to lose; L = 5 has
     "attend_one_query(q, k, v, i=0, w=1) with q, k, v [5, 3]: entry [component 0]: got "),
    ("gathered_attention", gathered_without_the_mask,  # query 0 of 1 token: its 2 padding keys weigh in
     "gathered_attention(q, k, v, w=1) with q, k, v [1, 2]: entry [query 0, component 0]: got "),
    ("chunks_for_600", {"padded_length": 1024, "num_chunks": 3, "computed_scores": 3 * 512 * 512},
     'chunks_for_600["padded_length"]: got 1024, expected 768 (expected from padded_length(600, 256)). Likely '
     "cause: 1024 is Longformer's own length, a multiple of 2w = 512"),
    ("chunks_for_600", {"padded_length": 768, "num_chunks": 2, "computed_scores": 600 * 513 - 256 * 257},
     'chunks_for_600["computed_scores"]: got 242008, expected 524288 (expected from the shape of chunk_scores: '
     "C x 2w x 2w). Likely cause: that is the useful N"),
    ("chunks_for_600", {"padded_length": 768, "num_chunks": 2},
     "the prediction has no entry 'computed_scores' (its keys: 'padded_length', 'num_chunks')"),
    ("padded_length", lambda L, w: -(-L // (2 * w)) * 2 * w,  # Longformer's multiple of 2w
     "padded_length(L=3, w=1): got 4, expected 3. Likely cause: a multiple of 2w, Longformer's rule"),
    ("shared_chunk", lambda i, j, w, L: min(i, j) // w,  # misses the exception: the last w tokens
     "shared_chunk(i=1, j=1, w=1, L=2): got chunk 1, but there are only C = 1 chunks, 0 .. 0 "
     "(expected from chunk(arange(L), w)). Likely cause: min(i, j) // w is chunk C for the last w tokens"),
    ("shared_chunk", lambda i, j, w, L: i // w if i < L - w else L // w - 2,  # the query's block only
     "shared_chunk(i=1, j=0, w=1, L=3): got chunk 1, which holds the indices 1 .. 2, not 0 "
     "(expected from chunk(arange(L), w)). Likely cause: the chunk of the query's block"),
    ("merge_heads", lambda x: x.reshape(x.shape[0] * x.shape[2], x.shape[1], x.shape[3]),  # no transpose
     "merge_heads(x) with x [B, L, H, d] = [2, 4, 3, 3]: entry [row 0, token 1, component 0]: got "),
    ("split_heads", lambda x, B: x.reshape(B, x.shape[1], x.shape[0] // B, x.shape[2]),
     "split_heads(x, B=2) with x [B*H, L, d] = [6, 4, 3]: entry [batch 0, token 0, head 1, component 0]: got "),
    ("chunk", chunk_copy, "chunk(x, w=2) with x [B*H, L, d] = [1, 8, 2]: got a copy, expected a view of the "
     "input (the same memory: no number copied)"),
    ("chunk", chunks_without_overlap, "chunk(x, w=2) with x [B*H, L, d] = [1, 8, 2]: got shape [1, 2, 4, 2], "
     "expected [1, 3, 4, 2] ([row, chunk, x, component])"),
    ("reshape_predictions", {"merged_strides": (20, 5, 1), "merged_shares_memory": True,
                             "split_strides": (60, 5, 20, 1), "one_head_shares_memory": True},
     'reshape_predictions["merged_shares_memory"]: got True, expected False (expected from merge_heads and '
     "split_heads on x = torch.zeros(2, 4, 3, 5)). Likely cause: with H > 1 the merge reorders the elements"),
    ("reshape_predictions", {"merged_strides": ..., "merged_shares_memory": False,
                             "split_strides": (60, 5, 20, 1), "one_head_shares_memory": True},
     'reshape_predictions["merged_strides"] is ...: fill in your prediction (in place of the ...)'),
    ("chunk_any_strides", chunk_assuming_contiguous,  # right on the contiguous input, wrong on the transposed
     "chunk_any_strides(x, w=2) with x [B*H, L, d] = [2, 8, 3], x = randn(2, 3, 8).transpose(1, 2): entry "),
    ("chunk_scores", lambda qc, kc: torch.einsum("rcxd,rcyd->rcyx", qc, kc),  # keys down the rows
     "chunk_scores(q_chunks, k_chunks) with chunks [B*H, C, 2w, d] = [1, 3, 4, 2]: entry [row 0, chunk 0, "
     "x 0, y 1]: got "),
    ("wasted_scores", wasted_at_the_padded_length,  # L = 1, w = 1: L' = 2, three of the four cells padding
     "wasted_scores(L=1, w=1): element 2: got 0, expected 3 (expected from counting each chunk's cells over "
     "the padded length). Likely cause: the formulas at L' count the padding tokens' scores"),
    ("skew_chunk", skew_stride_not_longer,  # a row stride of 4w reads each row from its own start
     "skew_chunk(m, w=2) with m [1, 3, 4, 4]: entry [0, 0, x 1, t 1]: got 0, expected 21 "),
    ("view_row_lengths", lambda w: [4 * w + 1] * (2 * w),  # as if the memory never ended: 8 numbers for w = 1
     "view_row_lengths(w=1): element 1: got 5, expected 3 (expected from swa_tutorial.tutorial.figures.explorers.skew_stages)"),
    ("dense_to_band", lambda S, w: dense_to_band_reversed(S, w), "dense_to_band(S, w=2) with S [8, 8]: entry "
     "[query 0, t 0]: got "),
    ("band_mask", lambda L, w: ((torch.arange(L)[:, None] + torch.arange(-w, w + 1)) < L)[None],  # key >= 0?
     "band_mask(L=1, w=1): entry [batch 0, query 0, t 0]: got True, expected False (1 of 3 entries differ). "
     "Likely cause: the keys before the first token (i + t - w < 0) hold no key either"),
    ("band_mask", lambda L, w: dense_to_band(torch.ones(L, L), w).bool(),  # right, but [L, 2w + 1]
     "band_mask(L=1, w=1): got shape [1, 3], expected [1, 1, 3] ([batch, query, t]). Likely cause: band_mask "
     "keeps a leading batch dimension of 1"),
    ("band_for_9", {"row_of_token_1": [11, 12, 13, 14, 0, 0, 0], "row_of_token_9": [96, 97, 98, 99, 0, 0, 0],
                    "masked_cells": 12},
     'band_for_9["row_of_token_1"]: element 0: got 11, expected 0 (expected from band_scores and band_mask on '
     "labelled_qkv(9), w = 3). Likely cause: column t holds key i + t - w"),
    ("band_softmax", softmax_with_nan_rows, "band_softmax(scores, mask) with scores [2, 8, 5] and padding keys: "
     "entry [batch 1, query 0, t 0]: got nan, expected 0 "),
    ("unskew", lambda rows: F.pad(rows, (0, rows.shape[-2] - 1)),  # the right shape, no shift
     "unskew(rows) with rows [2, 5], w = 2: entry [x 1, y 0]: got "),
    ("value_chunks", values_padded_at_the_end, "value_chunks(v, w=2) with v [B*H, L, d] = [1, 8, 2]: entry "
     "[row 0, block 0, y 0, component 0]: got "),
    ("causal_layer", symmetric_layer, "causal_layer(q, k, v, w=2) with [B, L, H, d] = [1, 8, 1, 2]: entry "
     "[batch 0, query 0, head 0, component 0]: got "),
    ("chunked_multiply_adds", lambda L, w, d: (max(2, L // w) - 1) * 4 * w * w * d,  # forgets P x V
     "chunked_multiply_adds(L=1, w=1, d=1): got 4, expected 10 (expected from the shapes of chunk_scores and "
     "unskew at the padded length). Likely cause: P x V forgotten"),
    ("symmetric_window", lambda left, right: (max(1, (left + right) // 2), right - max(1, (left + right) // 2)),
     "symmetric_window(left=0, right=3): got (1, 2): the band's diagonals 1 .. 3 miss the window's diagonal 0 "
     "(it needs 0 .. 3)"),  # floor, not ceil: an odd window loses a diagonal
    ("symmetric_window", lambda left, right: (max(1, left, right), 0),  # Part I's band of the longer side
     "symmetric_window(left=0, right=0): got (1, 0): the band holds the window, but its right edge 1 is not "
     "the window's right edge 0: shift = right - w = -1"),
    ("symmetric_window", lambda left, right: (max(1, left, right), right - max(1, left, right)),
     "symmetric_window(left=0, right=2): got (2, 0): the band holds the window, but w = 1 is enough "
     "(2w >= left + right = 2)"),
    ("symmetric_window", lambda left, right: ((left + right) // 2, right - (left + right) // 2),
     "symmetric_window(left=0, right=0): got (0, 0): w = 0, but the chunks need w >= 1"),
    ("flash_window_size", lambda W: (W, 0),  # the off-by-one of transformers 29623
     "flash_window_size(W=1): got (1, 0): window_size=(1, 0) lets token i see keys i - 1 .. i, 2 keys; "
     "Mistral's sliding_window=1 is keys i .. i, 1 key (expected from from_mistral(1))"),
    ("flash_window_size", lambda W: (W - 1, W - 1),  # right for causal=True, which is not passed
     "flash_window_size(W=2): got (1, 1): window_size=(1, 1) lets token i see keys i - 1 .. i + 1, 3 keys; "
     "Mistral's sliding_window=2 is keys i - 1 .. i, 2 keys (expected from from_mistral(2))"),
    ("flash_window_size", lambda W: (-1, 0),
     "flash_window_size(W=1): got (-1, 0): -1 means no limit, so the left side is unbounded"),
    ("dilated_keys", lambda i, left, right, d, L: [j for j in range(i - left, i + right + 1, d) if 0 <= j < L],
     "dilated_keys(i=0, left=1, right=1, d=2, L=1): got [], expected [0]: key 0 is missing (j - i = 0 = 0 d, "
     "inside the window (1, 1))"),  # the window not stretched by d: range(-1, 2, 2) skips 0
    ("dilated_keys", lambda i, left, right, d, L: list(range(i - left * d, i + right * d + 1, d)),
     "dilated_keys(i=0, left=1, right=1, d=2, L=1): got [-2, 0, 2], expected [0]: key -2 is not attended "
     "(it is outside the sequence 0 .. 0)"),
    ("dilated_keys", lambda i, left, right, d, L: [j for j in range(i - left * d, i + right * d + 1) if 0 <= j < L],
     "dilated_keys(i=0, left=1, right=1, d=2, L=7): got [0, 1, 2], expected [0, 2]: key 1 is not attended "
     "(j - i = 1 is not a multiple of d = 2)"),
    ("attend_by_slices", attend_the_whole_sequence,
     "attend_by_slices(q, k, v, window=1, d=2) with [B, L, H, d_h] = [2, 8, 2, 4]: entry [batch 0, position 0, "
     "head 0, component 0]: got "),
    ("cache_positions", newest_tokens_in_order,
     "cache_positions(T=3, left=1): slot 0: got 1, expected 2: the cache holds the newest tokens 1 .. 2, and "
     "token 2 is in slot 2 mod 2 = 0: got [1, 2], expected [2, 1] (expected from RollingKVCache.positions)"),
    ("cache_positions", lambda T, left: [0] * (left + 1),
     "cache_positions(T=0, left=0): slot 0: got 0, expected -1 (no token yet): got [0], expected [-1]"),
    ("decode_step", decode_step_unmasked,  # token 0 sees itself alone, not two zero keys besides
     "decode_step(q, keys, values, positions=[0, -1, -1]): token 0, left=2, d=2: entry [component 0]: got "),
    ("halo_range", lambda rank, lengths, window: (max(0, sum(lengths[:rank]) - window[0]),
                                               min(sum(lengths), sum(lengths[:rank + 1]) - 1 + window[1])),
     "halo_range(rank=0, lengths=[4, 4], window=(0, 0)): stop: got 3, expected 4: rank 0's last query, "
     "position 3, attends keys up to 3 + right = 3, and stop is one past the last key (expected from halo_plan)"),
    ("halo_range", lambda rank, lengths, window: (sum(lengths[:rank]) - window[0], sum(lengths[:rank + 1]) + window[1]),
     "halo_range(rank=1, lengths=[4, 4], window=(0, 1)): stop: got 9, expected 8: rank 1's last query, position "
     "7, attends keys up to 7 + right = 8, clipped to L - 1 = 7, and stop is one past the last key"),
    ("halo_bytes_sent", lambda lengths, window, token_bytes: [sum(window) * token_bytes] * len(lengths),
     "halo_bytes_sent(lengths=[4, 4], window=(0, 1), token_bytes=20): rank 0: got 20, expected 0 (it sends "
     "nothing) (expected from halo_bytes)"),  # the first rank has no left neighbour
    ("halo_bytes_sent", neighbours_send_whole_windows,
     "halo_bytes_sent(lengths=[4, 4], window=(0, 8), token_bytes=20): rank 1: got 160, expected 80 (4 tokens "
     "of 20 bytes: tokens 4 .. 7 to rank 0)"),
    ("online_step", online_step_without_rescale,  # token 1: (e^-1 + 1) + 1, not (e^-1 + 1) e^-1 + 1
     "online_step(*state, scores, values): the labelled rows, w = 2, key tile 1 (keys 3, 4): row_sum: entry "
     "[row 0]: got 2.36788, expected 1.50321 (4 of 8 entries differ)"),
    ("online_step", online_step_unguarded,  # tokens 5 to 8 see no key of tile 0: exp(-inf - (-inf)) = NaN
     "online_step(*state, scores, values): the labelled rows, w = 2, key tile 0 (keys 1, 2): row_sum: entry "
     "[row 4]: got nan, expected 0 (4 of 8 entries differ)"),
    ("tile_kind", lambda *args: "partial",
     "tile_kind(I=0, J=0, L=8, left=2, right=2, T_q=2, T_k=2): got 'partial', expected 'full': every query of "
     "tokens 1..2 attends every key of the tile (tokens from 1) (expected from the kernel's key_tile_span)"),
    ("tile_kind", tile_kind_without_the_end,
     "tile_kind(I=5, J=3, L=13, left=0, right=5, T_q=2, T_k=4): got 'full', expected 'partial': key 14 is past "
     "the end, but query 11 attends key 13 (tokens from 1) (expected from the kernel's key_tile_span)"),
    ("tile_backward", tile_backward_without_the_lse_gradient,
     "tile_backward(q, k, v, allowed, out, lse, grad_out, grad_lse, scale=1): 8 queries, 8 keys, the labelled "
     "tokens, w = 2: dq: entry [query 0, component 0]: got "),
    ("longformer_keys", lambda i, L, w, g: sorted([*range(max(0, i - w), min(L, i + w + 1)), *g]),  # twice
     "longformer_keys(i=0, L=1, w=3, global_tokens=[0]): got [0, 0], expected 1 ints: (0,) "
     "(expected from the keys dense_longformer_attention weighs)"),
    ("cu_seqlens", EXERCISES["cu_seqlens"].suspects[0].compute,  # documents counted from 0 only
     "cu_seqlens(position_ids=[[2, 3, 4, 2, 3]]) (positions from 2 (a RoBERTa-like model)): got [5], expected "
     "[0, 3, 5]: cu_seqlens starts at 0 and ends at the number of tokens, 5"),
    ("cu_seqlens", EXERCISES["cu_seqlens"].suspects[1].compute,  # a row's start missed
     "cu_seqlens(position_ids=[[0, 1, 2, 3], [4, 5, 6, 7]]) (the second row continues the first's positions): "
     "got [0, 8], expected [0, 4, 8]: a document starts at token 4 (a row's first token starts a document)"),
    ("cu_seqlens", lambda position_ids: torch.tensor([0, position_ids.numel()]),  # int64, one document
     "cu_seqlens(position_ids=[[0, 1, 2, 3, 4, 5]]) (one document): got dtype torch.int64, expected torch.int32 "
     "(FlashAttention's cu_seqlens are int32)"),
    ("merge_softmaxes", merge_without_the_max,  # e^lse overflows once the scores pass ~700
     "merge_softmaxes(out1, lse1, out2, lse2): 5 queries, keys split 4 + 5, scores of spread 1000: "
     "entry [query 0, component 0]: got nan, expected -1.03169 "),
    ("can_reach", lambda windows, dilations, distance: distance <= sum(windows),  # dilation ignored
     "can_reach(windows=[4], dilations=[2], distance=1): got True, expected False: 1 is in a gap"),
    ("can_reach", lambda windows, dilations, distance: distance <= sum(  # the farthest reach, taken as gap-free
        w * (d if isinstance(d, int) else max(d)) for w, d in zip(windows, dilations)),
     "can_reach(windows=[4], dilations=[2], distance=1): got True, expected False: 1 is in a gap"),
    ("can_reach", lambda windows, dilations, distance: distance < sum(windows),  # a window of w moving w - 1
     "can_reach(windows=[4], dilations=[1], distance=4): got False, expected True: a causal window of w keys to "
     "the left holds key i - w itself"),
    ("can_reach", lambda windows, dilations, distance: len(windows) <= distance <= sum(windows),  # no move of 0
     "can_reach(windows=[4], dilations=[1], distance=0): got False, expected True: every layer can also move 0 "
     "positions"),
    ("can_reach", lambda windows, dilations, distance: distance <= sum(windows) + 1,  # one hop too many
     "can_reach(windows=[4], dilations=[1], distance=5): got True, expected False: one too far"),
]



def dense_to_band_reversed(S, w):
    L = S.shape[-1]
    key = torch.arange(L)[:, None] - torch.arange(-w, w + 1)  # offsets the wrong way round
    inside = (key >= 0) & (key < L)
    picked = S.gather(-1, key.clamp(0, L - 1).expand(*S.shape[:-1], -1))
    return picked.masked_fill(~inside, 0)


@pytest.mark.parametrize("name, answer, message", WRONG, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG)])
def test_a_typical_wrong_answer_gets_its_specific_message(name, answer, message):
    got = diagnose(name, answer)
    assert got is not None, f"{name}: the wrong answer passed"
    assert got.startswith(message), f"\n got: {got}\nwant: {message}"


def test_every_exercise_has_a_typical_wrong_answer():
    """Here, or in tests/test_exercises_part2.py for the Part II exercises that file checks."""
    from test_exercises_part2 import WRONG_PART2

    assert {name for name, _, _ in WRONG + WRONG_PART2} == set(EXERCISES)


PART_ONE = {e.name for e in EXERCISES.values() if int(e.chapter[:2]) <= 11}


@pytest.mark.parametrize("name", sorted(PART_ONE))
def test_every_exercise_of_part_one_knows_typical_mistakes(name):
    assert EXERCISES[name].suspects, f"{name}: no suspect, so check can name no likely cause"


SUSPECTS = [(name, k) for name, e in EXERCISES.items() for k in range(len(e.suspects))]


@pytest.mark.parametrize("name, k", SUSPECTS, ids=[f"{n}-{k}" for n, k in SUSPECTS])
def test_every_suspect_is_a_mistake_that_check_names(name, k):
    """A suspect's result is wrong on some case, and on the first such case check names that suspect
    (beside any other suspect that gives the same result there): else the suspect is no mistake."""
    exercise = EXERCISES[name]
    suspect = exercise.suspects[k]
    for case in exercise.cases():
        value = suspect.compute(*case.args)
        if value is not None and case.compare(case.expected, value):
            assert f": {suspect.cause}" in likely_cause(exercise, case, value), case.call
            return
    pytest.fail(f"{name}: suspect {k} is right on every case ({suspect.cause})")


def test_a_prediction_must_be_a_dict():
    assert diagnose("band_for_9", [0, 0, 0]) == (
        "got list, expected a dict of predictions with the key 'row_of_token_1'"
    )


def test_an_error_in_the_answer_is_reported_with_the_call():
    def broken(L, w):
        return L / 0

    assert diagnose("padded_length", broken) == "padded_length(L=1, w=1) raised ZeroDivisionError: division by zero"


def test_check_prints_its_verdict(capsys):
    check("padded_length", lambda L, w: max(2 * w, -(-L // w) * w))
    assert capsys.readouterr().out.startswith("✓ padded_length: right on all ")
    check("padded_length", lambda L, w: L)
    out = capsys.readouterr().out
    assert out == ("✗ padded_length(L=1, w=1): got 1, expected 2. Likely cause: a sequence shorter\n"
                   "  than 2w still needs one whole chunk: L' >= 2w\n")
    assert all(len(line) <= WIDTH for line in out.splitlines())


def test_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match=re.escape("no exercise named 'nope'")):
        check("nope", print)


def test_another_right_answer_is_accepted():
    """The chunk of the larger index, one step back, also holds both: check accepts any right chunk."""
    assert diagnose("shared_chunk", lambda i, j, w, L: max(0, max(i, j) // w - 1)) is None


def test_expected_values_come_from_the_package():
    """A check whose expected values were stored would pass a frozen answer: they are computed."""
    cases = list(EXERCISES["window_pairs"].cases())
    assert all(c.expected == int(dense_band_mask(c.args[0], c.args[1:]).sum()) for c in cases)
