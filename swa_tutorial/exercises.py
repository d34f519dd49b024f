"""Exercises that check themselves, in the spirit of Sasha Rush's Triton-Puzzles.

Each exercise asks for one function, named after the package function it rebuilds (or after
the quantity it computes). ``check(name, answer)`` runs ``answer`` on inputs of its own, compares
each result with what the package's functions give (the specification, never a stored number),
and prints what it found::

    from swa_tutorial.exercises import check

    def num_chunks(L, w):
        return L // w - 1

    check("num_chunks", num_chunks)  # ✓ num_chunks: right on all 56 cases ...

On the first wrong case it says exactly what is wrong: the call, then the type, the shape, a
copy where a view was asked for, or the first wrong entry, named by its dimensions, with the
value got and the value expected, and how many entries differ. :func:`diagnose` returns that
message (None when the answer is right) instead of printing it. ``EXERCISES`` lists every
exercise: its name, its chapter and the function it asks for.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from . import online_softmax
from .backends.chunks import padded_length, symmetric_window
from .backends.triton_kernel import key_tile_span
from .band import band_mask, band_scores, band_softmax, dense_to_band
from .chunks import chunk, chunk_scores, merge_heads, num_chunks, split_heads
from .conventions import from_flash_attn, from_mistral
from .decoding import RollingKVCache
from .distributed import halo_bytes, halo_plan, shard_starts
from .labels import labelled_qkv
from .reference import dense_attention, dense_band_mask, dense_longformer_attention
from .skew import skew, unskew
from .softmax import masked_softmax
from .values import value_chunks
from .windows import window_mask

WIDTH = 78  # messages are wrapped to fit the book's text column

# A comparison returns what is wrong with ``got`` (None when nothing is), given the expected value.
Compare = Callable[[object, object], "str | None"]


@dataclass(frozen=True)
class Case:
    """One call of the answer: its arguments, how to show the call, the expected result."""

    call: str  # e.g. "band_pairs(L=8, w=2)"
    args: tuple
    expected: object
    compare: Compare
    source: str = ""  # where the expected value comes from, e.g. "dense_band_mask(8, 2).sum()"


@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: str
    task: str  # the function to write, in one sentence
    reference: str  # the package function(s) the answer is checked against
    cases: Callable[[], Iterator[Case]]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_generator(seed), dtype=torch.float64)


def _show(x) -> str:
    """A number as the messages print it."""
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


# ---------------------------------------------------------------------------------------------
# Comparisons.


def same_int(expected, got) -> str | None:
    """``got`` must be the integer ``expected`` (a Python int, or any integer-valued scalar)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, int):
        return f"got {got!r} ({type(got).__name__}), expected the int {expected}"
    if got != expected:
        return f"got {got}, expected {expected}"
    return None


def same_ints(expected, got) -> str | None:
    """``got`` must be the tuple or list of integers ``expected``, element by element."""
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"got {got!r}, expected {len(expected)} ints: {tuple(expected)!r}"
    for k, (e, g) in enumerate(zip(expected, got)):
        problem = same_int(e, g)
        if problem:
            return f"element {k}: {problem}"
    return None


def same_tensor(dims: tuple[str, ...], *, exact: bool = True, view_of=None) -> Compare:
    """A comparison of tensors whose dimensions are named ``dims`` in the messages ("" for none).

    ``exact``: entries must be equal; otherwise within 1e-10 (float64 inputs). ``view_of``: the
    answer must share the storage of this tensor (a view, not a copy).
    """

    def compare(expected: torch.Tensor, got) -> str | None:
        if not isinstance(got, torch.Tensor):
            return f"got {type(got).__name__}, expected a tensor of shape {list(expected.shape)}"
        if got.shape != expected.shape:
            return (f"got shape {list(got.shape)}, expected {list(expected.shape)} "
                    f"([{', '.join(dims)}])")
        if expected.dtype == torch.bool and got.dtype != torch.bool:
            return f"got dtype {got.dtype}, expected torch.bool"
        if view_of is not None and got.untyped_storage().data_ptr() != view_of.untyped_storage().data_ptr():
            return "got a copy, expected a view of the input (the same memory: no number copied)"
        got_ = got.detach().to(expected.dtype)
        if exact:
            wrong = got_ != expected
        else:
            wrong = ~torch.isclose(got_, expected, rtol=1e-10, atol=1e-10)
        if not wrong.any():
            return None
        index = tuple(int(i) for i in wrong.nonzero()[0])
        where = ", ".join(f"{name} {i}" if name else str(i) for name, i in zip(dims, index))
        count = int(wrong.sum())
        return (f"entry [{where}]: got {_show(got_[index])}, expected {_show(expected[index])} "
                f"({count} of {expected.numel()} entries differ)")

    return compare


def run(exercise: Exercise, answer) -> tuple[str | None, int]:
    """(what is wrong with the first wrong case or None, the number of cases checked)."""
    count = 0
    for case in exercise.cases():
        count += 1
        try:
            got = answer(*case.args)
        except Exception as error:  # the reader's code: any error is a finding
            return f"{case.call} raised {type(error).__name__}: {error}", count
        if got is None:
            return f"{case.call} returned None: fill in the function body (in place of the ...)", count
        problem = case.compare(case.expected, got)
        if problem:
            source = f" (expected from {case.source})" if case.source else ""
            return f"{case.call}: {problem}{source}", count
    return None, count


def diagnose(name: str, answer) -> str | None:
    """What is wrong with ``answer`` to exercise ``name``, or None when it is right on every case."""
    return run(_exercise(name), answer)[0]


def check(name: str, answer) -> None:
    """Run exercise ``name`` on ``answer``; print a tick and the number of cases, or what is wrong.

    It returns nothing, so that a notebook cell ending with it shows the message alone; use
    :func:`diagnose` to get the verdict as a value.
    """
    exercise = _exercise(name)
    problem, count = run(exercise, answer)
    if problem:
        message = f"✗ {problem}"
    else:
        message = f"✓ {exercise.name}: right on all {count} cases (checked against {exercise.reference})"
    print(textwrap.fill(message, WIDTH, subsequent_indent="  "))


def _exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; the exercises are {', '.join(EXERCISES)}")
    return EXERCISES[name]


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
        q, k, v = _randn(3, L, d, seed=seed)
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
        x = _randn(B, L, H, d, seed=seed)
        yield Case(f"merge_heads(x) with x [B, L, H, d] = {[B, L, H, d]}", (x,), merge_heads(x),
                   same_tensor(("row", "token", "component")))


def _split_heads() -> Iterator[Case]:
    for seed, (B, L, H, d) in enumerate([(1, 4, 1, 2), (2, 4, 3, 3), (3, 5, 2, 1), (2, 6, 4, 5)]):
        x = _randn(B * H, L, d, seed=seed)
        yield Case(f"split_heads(x, B={B}) with x [B*H, L, d] = {[B * H, L, d]}", (x, B), split_heads(x, B),
                   same_tensor(("batch", "token", "head", "component")))


def _chunk() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 2), (2, 12, 1, 3), (2, 10, 4, 5), (1, 4, 2, 1)]):
        x = _randn(BH, L, d, seed=seed)
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
        q, k = _randn(2, BH, L, d, seed=seed)
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
    inputs = [(_labelled_scores(2, 8), 2), (_randn(2, 3, 6, 6, seed=0), 3), (_randn(4, 2, 2, seed=1), 1)]
    for m, w in inputs:
        yield Case(f"skew_chunk(m, w={w}) with m {list(m.shape)}", (m, w), skew(m, -w, 2 * w + 1),
                   same_tensor(("",) * (m.dim() - 2) + ("x", "t"), exact=False), f"skew(m, -{w}, {2 * w + 1})")


def _view_row_lengths() -> Iterator[Case]:
    from .explorers import skew_stages  # here, so that only this exercise needs matplotlib

    for w in range(1, 7):
        lengths = [len(row) for row in skew_stages(0, w, seq_len=2 * w)["view"]]
        yield Case(f"view_row_lengths(w={w})", (w,), lengths, same_ints, "swa_tutorial.explorers.skew_stages")


def _dense_to_band() -> Iterator[Case]:
    for seed, (shape, w) in enumerate([((8, 8), 2), ((2, 5, 5), 1), ((3, 9, 9), 3), ((4, 4), 6)]):
        S = _randn(*shape, seed=seed)
        yield Case(f"dense_to_band(S, w={w}) with S {list(shape)}", (S, w), dense_to_band(S, w),
                   same_tensor(("",) * (len(shape) - 2) + ("query", "t")))


def _band_mask() -> Iterator[Case]:
    for L in range(1, 13):
        for w in range(1, 7):
            yield Case(f"band_mask(L={L}, w={w})", (L, w), band_mask(L, w)[0], same_tensor(("query", "t")))


def _band_softmax() -> Iterator[Case]:
    for seed, (L, w) in enumerate([(8, 2), (12, 3), (6, 1)]):
        scores = _randn(2, L, 2 * w + 1, seed=seed)
        padding = torch.rand(2, L, generator=_generator(seed)) < 0.4
        padding[1, : 2 * w + 1] = True  # some rows of batch element 1 see no key at all
        for mask in (band_mask(L, w), band_mask(L, w, key_padding_mask=padding)):
            yield Case(f"band_softmax(scores, mask) with scores [2, {L}, {2 * w + 1}]"
                       f"{'' if mask.shape[0] == 1 else ' and padding keys'}", (scores, mask),
                       band_softmax(scores, mask), same_tensor(("batch", "query", "t"), exact=False))


def _unskew() -> Iterator[Case]:
    for seed, (shape, w) in enumerate([((2, 5), 2), ((3, 4, 3, 7), 3), ((1, 3), 1)]):
        rows = _randn(*shape, seed=seed)
        yield Case(f"unskew(rows) with rows {list(shape)}, w = {w}", (rows,), unskew(rows),
                   same_tensor(("",) * (len(shape) - 2) + ("x", "y")))


def _value_chunks() -> Iterator[Case]:
    for seed, (BH, L, d, w) in enumerate([(1, 8, 2, 2), (3, 12, 3, 3), (2, 5, 1, 1)]):
        v = _randn(BH, L, d, seed=seed)
        yield Case(f"value_chunks(v, w={w}) with v [B*H, L, d] = {[BH, L, d]}", (v, w), value_chunks(v, w),
                   same_tensor(("row", "block", "y", "component")))


def _causal_layer() -> Iterator[Case]:
    for seed, (B, L, H, d, w) in enumerate([(1, 8, 1, 2, 2), (2, 12, 3, 4, 2), (1, 24, 2, 8, 4), (2, 6, 1, 3, 3)]):
        q, k, v = _randn(3, B, L, H, d, seed=seed)
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


# ---------------------------------------------------------------------------------------------
# From chunks to tiles, and the fused kernel.


def same_tensors(names: tuple[str, ...], dims: tuple[tuple[str, ...], ...]) -> Compare:
    """A tuple of tensors named ``names`` (within 1e-10), each with its dimensions named ``dims``."""

    def compare(expected, got) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"got {type(got).__name__}, expected a tuple ({', '.join(names)})"
        for name, dim, e, g in zip(names, dims, expected, got):
            problem = same_tensor(dim, exact=False)(e, g)
            if problem:
                return f"{name}: {problem}"
        return None

    return compare


def _labelled_rows(window) -> tuple[torch.Tensor, torch.Tensor]:
    """The labelled example's scores [8, 8] (10 i + j), -inf outside ``window``, and values [8, 2]."""
    q, k, v = labelled_qkv(8)
    S = q[0, :, 0] @ k[0, :, 0].T
    return S.masked_fill(~window_mask(8, window), float("-inf")), v[0, :, 0]


def _online_step() -> Iterator[Case]:
    compare = same_tensors(("row_max", "row_sum", "acc"), (("row",), ("row",), ("row", "component")))
    scores, values = _labelled_rows((2, 2))
    state = online_softmax.start(8, 2)
    for tile in range(4):  # the 8 labelled rows against key tiles of 2 keys
        cols = slice(2 * tile, 2 * tile + 2)
        expected = online_softmax.step(state, scores[:, cols], values[cols])
        yield Case(f"online_step(*state, scores, values): the labelled rows, w = 2, key tile {tile} (keys "
                   f"{2 * tile + 1}, {2 * tile + 2})", (*state, scores[:, cols], values[cols]), expected, compare,
                   "swa_tutorial.online_softmax.step")
        state = expected
    for seed, (rows, n, d_v, size) in enumerate([(4, 5, 3, 1.0), (3, 2, 1, 1e3), (5, 4, 2, 30.0)]):
        keys = _randn(3, d_v, seed=seed + 10)
        before = online_softmax.step(online_softmax.start(rows, d_v), size * _randn(rows, 3, seed=seed), keys)
        tile = size * _randn(rows, n, seed=seed + 20)
        tile[0] = float("-inf")  # row 0 may attend no key of this tile
        tile[-1, 0] = before.row_max[-1] + 5  # the last row's maximum moves up
        values_ = _randn(n, d_v, seed=seed + 30)
        yield Case(f"online_step(*state, scores, values): {rows} rows, {n} keys, scores of size {size:g}",
                   (*before, tile, values_), online_softmax.step(before, tile, values_), compare,
                   "swa_tutorial.online_softmax.step")
    blind = torch.tensor([[float("-inf")] * 2, [1.0, float("-inf")], [float("-inf")] * 2], dtype=torch.float64)
    fresh = online_softmax.start(3, 2)
    yield Case("online_step(*start(3, 2), scores, values): rows 0 and 2 have no key yet", (*fresh, blind, values[:2]),
               online_softmax.step(fresh, blind, values[:2]), compare,
               "swa_tutorial.online_softmax.step: such a row keeps row_max -inf and row_sum 0")


def _tile_kind_compare(I: int, J: int, L: int, left: int, right: int, tq: int, tk: int) -> Compare:
    """The kind got must be the kernel's; if not, say why, with a (query, key) pair as a witness."""
    queries, keys = range(I * tq, min((I + 1) * tq, L)), range(J * tk, (J + 1) * tk)

    def sees(i, j):
        return j < L and i - left <= j <= i + right

    def compare(expected, got) -> str | None:
        if got == expected:
            return None
        if expected == "skipped":
            why = f"no query of tokens {queries[0] + 1}..{queries[-1] + 1} attends a key of the tile"
        elif expected == "full":
            why = f"every query of tokens {queries[0] + 1}..{queries[-1] + 1} attends every key of the tile"
        else:
            i, j = next((i, j) for i in queries for j in keys if not sees(i, j))
            seen = next((i, j) for i in queries for j in keys if sees(i, j))
            missing = f"key {j + 1} is past the end" if j >= L else f"query {i + 1} may not attend key {j + 1}"
            why = f"{missing}, but query {seen[0] + 1} attends key {seen[1] + 1}"
        return f"got {got!r}, expected {expected!r}: {why} (tokens from 1)"

    return compare


def _tile_kind() -> Iterator[Case]:
    for L, (left, right), (tq, tk) in [
        (8, (2, 2), (2, 2)), (8, (2, 2), (4, 4)), (13, (3, 0), (4, 2)), (13, (0, 5), (2, 4)),
        (20, (7, 1), (3, 5)), (20, (40, 40), (8, 8)), (40, (9, 9), (8, 4)), (40, (0, 0), (4, 4)),
    ]:
        for I in range(-(-L // tq)):
            start, full_start, full_end, end = key_tile_span(I, L, left, right, tq, tk)
            for J in range(-(-L // tk)):
                kind = "skipped" if not start <= J < end else "full" if full_start <= J < full_end else "partial"
                yield Case(f"tile_kind(I={I}, J={J}, L={L}, left={left}, right={right}, T_q={tq}, T_k={tk})",
                           (I, J, L, left, right, tq, tk), kind, _tile_kind_compare(I, J, L, left, right, tq, tk),
                           "the kernel's key_tile_span")


def _tile_backward_case(q, k, v, allowed, scale: float, seed: int, what: str) -> Case:
    """dq, dk, dv of one tile from autograd through the masked softmax, the loss
    sum(out * grad_out) + sum(lse * grad_lse) (no lse gradient on a row that sees no key)."""
    leaves = [x.clone().requires_grad_() for x in (q, k, v)]
    probs, lse = masked_softmax(scale * leaves[0] @ leaves[1].T, allowed)  # R x n, R
    out = probs @ leaves[2]
    grad_out = _randn(*out.shape, seed=seed)
    grad_lse = torch.where(lse.isfinite(), _randn(*lse.shape, seed=seed + 1), 0.0)
    loss = (out * grad_out).sum() + (torch.where(lse.isfinite(), lse, 0.0) * grad_lse).sum()
    expected = torch.autograd.grad(loss, leaves)
    args = (q, k, v, allowed, out.detach(), lse.detach(), grad_out, grad_lse, scale)
    R, n = allowed.shape
    return Case(f"tile_backward(q, k, v, allowed, out, lse, grad_out, grad_lse, scale={scale:g}): {R} queries, "
                f"{n} keys, {what}", args, expected,
                same_tensors(("dq", "dk", "dv"), (("query", "component"), ("key", "component"), ("key", "component"))),
                "autograd through swa_tutorial.softmax.masked_softmax")


def _tile_backward() -> Iterator[Case]:
    q, k, v = (x[0, :, 0] for x in labelled_qkv(8))
    yield _tile_backward_case(q, k, v, window_mask(8, (2, 2)), 1.0, 0, "the labelled tokens, w = 2")
    yield _tile_backward_case(q, k, v, window_mask(8, (2, 0)), 0.1, 1, "the labelled tokens, window (2, 0)")
    x = _randn(3, 7, 4, seed=2)
    yield _tile_backward_case(x[0, :5], x[1], x[2, :, :3], window_mask(7, (1, 3))[:5], 0.5, 3, "random")
    allowed = window_mask(6, (1, 1))
    allowed[2] = False  # query 3 attends no key: its P is 0, never NaN
    yield _tile_backward_case(*_randn(3, 6, 2, seed=4), allowed, 2.0, 5, "random, query 3 sees no key")


# ---------------------------------------------------------------------------------------------
# Longformer's global attention.


def _longformer_keys() -> Iterator[Case]:
    g = _generator(0)
    for L in range(1, 11):
        for w in range(1, 4):
            chosen = torch.rand(L, generator=g) < 0.3
            global_tokens = chosen.nonzero().flatten().tolist()
            # q = k = 0 gives every key a query attends the same weight, so with v the identity
            # row i of the output is nonzero exactly on query i's keys
            zeros = torch.zeros(1, L, 1, 1, dtype=torch.float64)
            identity = torch.eye(L, dtype=torch.float64)[None, :, None]  # v [1, L, 1, L]
            weights = dense_longformer_attention(zeros, zeros, identity, w, global_mask=chosen[None])[0, :, 0]
            for i in range(L):
                yield Case(f"longformer_keys(i={i}, L={L}, w={w}, global_tokens={global_tokens})",
                           (i, L, w, global_tokens), weights[i].nonzero().flatten().tolist(), same_ints,
                           "the keys dense_longformer_attention weighs")


def _merge_softmaxes() -> Iterator[Case]:
    for seed, spread in enumerate((1.0, 30.0, 1000.0)):
        scores, values = _randn(5, 9, seed=seed) * spread, _randn(9, 3, seed=seed + 10)
        first = torch.rand(9, generator=_generator(seed)) < 0.5
        parts = [(scores[:, m].softmax(-1) @ values[m], scores[:, m].logsumexp(-1)) for m in (first, ~first)]
        yield Case(f"merge_softmaxes(out1, lse1, out2, lse2): 5 queries, keys split {int(first.sum())} + "
                   f"{int((~first).sum())}, scores of spread {spread:g}", (*parts[0], *parts[1]),
                   scores.softmax(-1) @ values, same_tensor(("query", "component"), exact=False),
                   "one softmax over all the keys")


# ---------------------------------------------------------------------------------------------
# Windows of every shape, dilation, generation, a sequence over several devices.


def _pair_of_ints(got) -> bool:
    return (isinstance(got, (tuple, list)) and len(got) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in got))


def _symmetric_window_compare(left: int, right: int) -> Compare:
    """The band (w, shift) must hold the window, be the narrowest, and end on its right edge."""

    def compare(expected, got) -> str | None:
        if not _pair_of_ints(got):
            return f"got {got!r}, expected a pair of ints (w, shift)"
        w, shift = got
        if w < 1:
            return f"got {tuple(got)}: w = {w}, but the chunks need w >= 1"
        lo, hi = shift - w, shift + w
        missed = [o for o in range(-left, right + 1) if not lo <= o <= hi]
        if missed:
            return (f"got {tuple(got)}: the band's diagonals {lo} .. {hi} miss the window's diagonal "
                    f"{missed[0]} (it needs {-left} .. {right})")
        if w > expected[0]:
            return (f"got {tuple(got)}: the band holds the window, but w = {expected[0]} is enough "
                    f"(2w >= left + right = {left + right})")
        if shift != expected[1]:
            return (f"got {tuple(got)}: the band holds the window, but its right edge {hi} is not the "
                    f"window's right edge {right}: shift = right - w = {expected[1]}")
        return None

    return compare


def _symmetric_window() -> Iterator[Case]:
    for left in range(13):
        for right in range(13):
            yield Case(f"symmetric_window(left={left}, right={right})", (left, right),
                       symmetric_window(left, right), _symmetric_window_compare(left, right))


def _keys_of(window) -> str:
    """'keys i - 3 .. i, 4 keys' for (3, 0): a window as a token far from the ends sees it."""
    left, right = window

    def side(n, sign):
        return "" if n == 0 else f" {sign} {n}"

    count = left + right + 1
    return f"keys i{side(left, '-')} .. i{side(right, '+')}, {count} key{'s' if count > 1 else ''}"


def _flash_window_size_compare(W: int) -> Compare:
    def compare(expected, got) -> str | None:
        try:
            window = from_flash_attn(got)
        except (TypeError, ValueError) as error:
            return f"got {got!r}, which FlashAttention's window_size does not take: {error}"
        if window == expected:
            return None
        if None in window:
            sides = " and ".join(n for n, s in zip(("left", "right"), window) if s is None)
            return f"got {tuple(got)}: -1 means no limit, so the {sides} side is unbounded"
        return (f"got {tuple(got)}: window_size={tuple(got)} lets token i see {_keys_of(window)}; "
                f"Mistral's sliding_window={W} is {_keys_of(expected)}")

    return compare


def _flash_window_size() -> Iterator[Case]:
    for W in range(1, 17):
        yield Case(f"flash_window_size(W={W})", (W,), from_mistral(W), _flash_window_size_compare(W),
                   f"from_mistral({W})")


def _keys_compare(i: int, left: int, right: int, d: int, L: int) -> Compare:
    """Query i's keys under a dilated window: name the first key missing or wrongly there, and why."""

    def compare(expected, got) -> str | None:
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or not all(isinstance(j, int) for j in got):
            return f"got {got!r}, expected a list of ints: {expected}"
        extra = [j for j in got if j not in expected]
        if extra:
            j = extra[0]
            if not 0 <= j < L:
                why = f"it is outside the sequence 0 .. {L - 1}"
            elif (j - i) % d:
                why = f"j - i = {j - i} is not a multiple of d = {d}"
            else:
                why = f"it is {abs(j - i) // d} steps of d = {d} away, outside the window ({left}, {right})"
            return f"got {list(got)}, expected {expected}: key {j} is not attended ({why})"
        missing = [j for j in expected if j not in got]
        if missing:
            j = missing[0]
            return (f"got {list(got)}, expected {expected}: key {j} is missing (j - i = {j - i} = "
                    f"{(j - i) // d} d, inside the window ({left}, {right}))")
        if list(got) != expected:
            return f"got {list(got)}, expected {expected}: each key once, in increasing order"
        return None

    return compare


def _dilated_keys() -> Iterator[Case]:
    for L in (1, 7, 12):
        for left, right, d in [(1, 1, 2), (2, 0, 3), (0, 3, 2), (3, 2, 4), (1, 1, 1), (1, 1, 12)]:
            mask = window_mask(L, (left, right), dilation=d)
            for i in range(L):
                yield Case(f"dilated_keys(i={i}, left={left}, right={right}, d={d}, L={L})",
                           (i, left, right, d, L), mask[i].nonzero().flatten().tolist(),
                           _keys_compare(i, left, right, d, L),
                           f"window_mask({L}, ({left}, {right}), dilation={d})")


def _with_class(d: int) -> Compare:
    """Outputs [B, L, H, d_v]; the message also names the residue class of the wrong position."""
    compare = same_tensor(("batch", "position", "head", "component"), exact=False)

    def with_class(expected, got) -> str | None:
        problem = compare(expected, got)
        if problem and problem.startswith("entry"):  # the first wrong entry, as compare found it
            wrong = ~torch.isclose(got.detach().to(expected.dtype), expected, rtol=1e-10, atol=1e-10)
            position = int(wrong.nonzero()[0, 1])
            problem += f"; position {position} is in class {position % d}"
        return problem

    return with_class


def _attend_by_slices() -> Iterator[Case]:
    for seed, (L, window, d) in enumerate([(8, 1, 2), (11, (2, 0), 3), (20, (1, 3), 4), (5, 2, 1), (3, 1, 7)]):
        q, k, v = _randn(3, 2, L, 2, 4, seed=seed)
        yield Case(f"attend_by_slices(q, k, v, window={window}, d={d}) with [B, L, H, d] = [2, {L}, 2, 4]",
                   (q, k, v, window, d), dense_attention(q, k, v, window, dilation=d), _with_class(d),
                   f"dense_attention(q, k, v, {window}, dilation={d})")


def _slots_compare(T: int, left: int) -> Compare:
    """The token each slot holds (-1: none): name the first wrong slot and the rule it breaks."""
    S = left + 1

    def compare(expected, got) -> str | None:
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or len(got) != S:
            return f"got {got!r}, expected {S} ints, one per slot: {expected}"
        for s, (e, g) in enumerate(zip(expected, got)):
            if g == e:
                continue
            if e == -1:
                why = f"after {T} tokens only slots 0 .. {T - 1} hold one" if T else "no token yet"
                return f"slot {s}: got {g!r}, expected -1 ({why}): got {list(got)}, expected {expected}"
            return (f"slot {s}: got {g!r}, expected {e}: the cache holds the newest tokens {max(0, T - S)} .. "
                    f"{T - 1}, and token {e} is in slot {e} mod {S} = {s}: got {list(got)}, expected {expected}")
        return None

    return compare


def _cache_positions() -> Iterator[Case]:
    for left in range(6):
        cache = RollingKVCache(left, batch=1, heads=1, head_dim=1, dtype=torch.float64)
        token = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
        cache.prefill(token[:, :0], token[:, :0], token[:, :0])  # an empty prompt
        for T in range(13):
            if T:
                cache.step(token, token, token)
            yield Case(f"cache_positions(T={T}, left={left})", (T, left), cache.positions.tolist(),
                       _slots_compare(T, left), "RollingKVCache.positions")


def _decode_step() -> Iterator[Case]:
    for seed, (left, t, d) in enumerate([(2, 0, 2), (2, 1, 2), (2, 4, 2), (3, 9, 4), (0, 3, 3), (5, 2, 8)]):
        q, k, v = _randn(3, 1, t + 1, 1, d, seed=seed)
        cache = RollingKVCache(left, batch=1, heads=1, head_dim=d, dtype=torch.float64)
        cache.prefill(q[:, :t], k[:, :t], v[:, :t])
        cache.step(q[:, t:], k[:, t:], v[:, t:])  # token t, the newest
        args = (q[0, t, 0], cache.keys[0, :, 0].clone(), cache.values[0, :, 0].clone(), cache.positions.clone())
        yield Case(f"decode_step(q, keys, values, positions={cache.positions.tolist()}): token {t}, "
                   f"left={left}, d={d}", args, dense_attention(q, k, v, (left, 0))[0, t, 0],
                   same_tensor(("component",), exact=False), f"dense_attention(q, k, v, ({left}, 0))[:, {t}]")


def _halo_cases(empty_shards: bool) -> Iterator[tuple[list[int], tuple[int, int]]]:
    shards = [[4, 4], [3, 2, 3, 4], [1, 1, 1, 1, 1], [2, 9, 2]] + ([[5, 0, 2, 7]] if empty_shards else [])
    for lengths in shards:
        for window in itertools.product([0, 1, 2, 4, 7], [0, 1, 3, 8]):
            yield lengths, window


def _halo_range_compare(rank: int, lengths: list[int], window: tuple[int, int]) -> Compare:
    starts = shard_starts(lengths)
    first, last, L = starts[rank], starts[rank + 1] - 1, starts[-1]
    (left, right) = window

    def compare(expected, got) -> str | None:
        if not _pair_of_ints(got):
            return f"got {got!r}, expected a pair of ints (start, stop): {expected}"
        if got[0] != expected[0]:
            clip = ", clipped to 0" if first - left < 0 else ""
            return (f"start: got {got[0]}, expected {expected[0]}: rank {rank}'s first query, position "
                    f"{first}, attends keys from {first} - left = {first - left}{clip}")
        if got[1] != expected[1]:
            clip = f", clipped to L - 1 = {L - 1}" if last + right > L - 1 else ""
            return (f"stop: got {got[1]}, expected {expected[1]}: rank {rank}'s last query, position {last}, "
                    f"attends keys up to {last} + right = {last + right}{clip}, and stop is one past the "
                    f"last key")
        return None

    return compare


def _halo_range() -> Iterator[Case]:
    for lengths, window in _halo_cases(empty_shards=False):
        starts, plan = shard_starts(lengths), halo_plan(lengths, window)
        for rank in range(len(lengths)):
            received = [t for t in plan if t.dst == rank]
            expected = (min([starts[rank]] + [t.start for t in received]),
                        max([starts[rank + 1]] + [t.stop for t in received]))
            yield Case(f"halo_range(rank={rank}, lengths={lengths}, window={window})", (rank, lengths, window), expected,
                       _halo_range_compare(rank, lengths, window), "halo_plan")


def _bytes_sent_compare(lengths: list[int], window: tuple[int, int], token_bytes: int) -> Compare:
    plan = halo_plan(lengths, window)

    def compare(expected, got) -> str | None:
        if not isinstance(got, (list, tuple)) or len(got) != len(lengths):
            return f"got {got!r}, expected {len(lengths)} ints, one per rank: {expected}"
        for rank, (e, g) in enumerate(zip(expected, got)):
            if g == e:
                continue
            sends = [f"tokens {t.start} .. {t.stop - 1} to rank {t.dst}" for t in plan if t.src == rank]
            tokens = e // token_bytes
            what = ("it sends nothing" if not sends else
                    f"{tokens} token{'s' if tokens > 1 else ''} of {token_bytes} bytes: {', '.join(sends)}")
            return f"rank {rank}: got {g!r}, expected {e} ({what})"
        return None

    return compare


def _halo_bytes_sent() -> Iterator[Case]:
    for lengths, window in _halo_cases(empty_shards=True):
        expected = halo_bytes(lengths, window, heads=1, head_dim=3, value_dim=2, itemsize=4)  # 20 a token
        yield Case(f"halo_bytes_sent(lengths={lengths}, window={window}, token_bytes=20)", (lengths, window, 20),
                   expected, _bytes_sent_compare(lengths, window, 20), "halo_bytes")


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in [
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
                 "swa_tutorial.skew", _skew_chunk),
        Exercise("view_row_lengths", "08_skew",
                 "view_row_lengths(w): how many numbers each row of the skew's view reads",
                 "swa_tutorial.explorers.skew_stages", _view_row_lengths),
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
        Exercise("symmetric_window", "12_window_shapes",
                 "symmetric_window(left, right): (w, shift) of the narrowest band about a shifted diagonal",
                 "swa_tutorial.backends.chunks.symmetric_window", _symmetric_window),
        Exercise("flash_window_size", "12_window_shapes",
                 "flash_window_size(W): FlashAttention's window_size for Mistral's sliding_window=W",
                 "swa_tutorial.conventions", _flash_window_size),
        Exercise("dilated_keys", "13_dilation",
                 "dilated_keys(i, left, right, d, L): the sorted keys query i attends with dilation d",
                 "swa_tutorial.windows.window_mask", _dilated_keys),
        Exercise("attend_by_slices", "13_dilation",
                 "attend_by_slices(q, k, v, window, d): dilated attention, one residue class at a time",
                 "swa_tutorial.dense_attention", _attend_by_slices),
        Exercise("cache_positions", "14_generation",
                 "cache_positions(T, left): the token each slot of the rolling cache holds after T tokens",
                 "swa_tutorial.RollingKVCache", _cache_positions),
        Exercise("decode_step", "14_generation",
                 "decode_step(q, keys, values, positions): the newest token's output from the cache",
                 "swa_tutorial.dense_attention", _decode_step),
        Exercise("online_step", "16_tiles",
                 "online_step(row_max, row_sum, acc, scores, values): one key tile folded into the running softmax",
                 "swa_tutorial.online_softmax.step", _online_step),
        Exercise("tile_kind", "16_tiles",
                 "tile_kind(I, J, L, left, right, T_q, T_k): 'full', 'partial' or 'skipped'",
                 "the kernel's key_tile_span", _tile_kind),
        Exercise("tile_backward", "17_tiles_kernel",
                 "tile_backward(q, k, v, allowed, out, lse, grad_out, grad_lse, scale): dq, dk, dv of one tile",
                 "autograd through the masked softmax", _tile_backward),
        Exercise("longformer_keys", "15_longformer",
                 "longformer_keys(i, L, w, global_tokens): the sorted keys query i attends, each once",
                 "swa_tutorial.reference.dense_longformer_attention", _longformer_keys),
        Exercise("merge_softmaxes", "15_longformer",
                 "merge_softmaxes(out1, lse1, out2, lse2): one softmax from two over disjoint keys",
                 "one softmax over all the keys", _merge_softmaxes),
        Exercise("halo_range", "18_sequence_parallel",
                 "halo_range(rank, lengths, window): the positions start .. stop - 1 of the rank's keys and halo",
                 "swa_tutorial.distributed.halo_plan", _halo_range),
        Exercise("halo_bytes_sent", "18_sequence_parallel",
                 "halo_bytes_sent(lengths, window, token_bytes): the bytes each rank sends its neighbours",
                 "swa_tutorial.distributed.halo_bytes", _halo_bytes_sent),
    ]
}
