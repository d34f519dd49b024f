"""The exercises of chapters 16 to 19: tiles, the fused kernel, a sequence over several devices, and
reading the benchmark files (whose cases come from the committed files in the repository's
``book/data``).

Each exercise lists typical wrong computations (:class:`~.framework.Suspect`): when an answer's
result equals one, ``check`` names the mistake as the likely cause.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
from pathlib import Path
from typing import Iterator

import torch

from swa_tutorial.bench import compare
from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.core.tiling import key_tile_span, span_table
from swa_tutorial.core.windows import window_mask
from swa_tutorial.distributed import halo_bytes, halo_plan, shard_starts
from swa_tutorial.steps import online_softmax
from swa_tutorial.steps.labels import labelled_qkv
from swa_tutorial.tutorial.benchmark_report import by_impl, crossover, load_runs
from swa_tutorial.tutorial.exercises.framework import (
    Case,
    Compare,
    Exercise,
    Suspect,
    pair_of_ints,
    randn,
    same_tensor,
)
from swa_tutorial.tutorial.exercises.windows_and_longformer import prediction_cases, prediction_suspect

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
                   "swa_tutorial.steps.online_softmax.step")
        state = expected
    for seed, (rows, n, d_v, size) in enumerate([(4, 5, 3, 1.0), (3, 2, 1, 1e3), (5, 4, 2, 30.0)]):
        keys = randn(3, d_v, seed=seed + 10)
        before = online_softmax.step(online_softmax.start(rows, d_v), size * randn(rows, 3, seed=seed), keys)
        tile = size * randn(rows, n, seed=seed + 20)
        tile[0] = float("-inf")  # row 0 may attend no key of this tile
        tile[-1, 0] = before.row_max[-1] + 5  # the last row's maximum moves up
        values_ = randn(n, d_v, seed=seed + 30)
        yield Case(f"online_step(*state, scores, values): {rows} rows, {n} keys, scores of size {size:g}",
                   (*before, tile, values_), online_softmax.step(before, tile, values_), compare,
                   "swa_tutorial.steps.online_softmax.step")
    blind = torch.tensor([[float("-inf")] * 2, [1.0, float("-inf")], [float("-inf")] * 2], dtype=torch.float64)
    fresh = online_softmax.start(3, 2)
    yield Case("online_step(*start(3, 2), scores, values): rows 0 and 2 have no key yet", (*fresh, blind, values[:2]),
               online_softmax.step(fresh, blind, values[:2]), compare,
               "swa_tutorial.steps.online_softmax.step: such a row keeps row_max -inf and row_sum 0")


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
    grad_out = randn(*out.shape, seed=seed)
    grad_lse = torch.where(lse.isfinite(), randn(*lse.shape, seed=seed + 1), 0.0)
    loss = (out * grad_out).sum() + (torch.where(lse.isfinite(), lse, 0.0) * grad_lse).sum()
    expected = torch.autograd.grad(loss, leaves)
    args = (q, k, v, allowed, out.detach(), lse.detach(), grad_out, grad_lse, scale)
    R, n = allowed.shape
    return Case(f"tile_backward(q, k, v, allowed, out, lse, grad_out, grad_lse, scale={scale:g}): {R} queries, "
                f"{n} keys, {what}", args, expected,
                same_tensors(("dq", "dk", "dv"), (("query", "component"), ("key", "component"), ("key", "component"))),
                "autograd through swa_tutorial.core.softmax.masked_softmax")


def _tile_backward() -> Iterator[Case]:
    q, k, v = (x[0, :, 0] for x in labelled_qkv(8))
    yield _tile_backward_case(q, k, v, window_mask(8, (2, 2)), 1.0, 0, "the labelled tokens, w = 2")
    yield _tile_backward_case(q, k, v, window_mask(8, (2, 0)), 0.1, 1, "the labelled tokens, window (2, 0)")
    x = randn(3, 7, 4, seed=2)
    yield _tile_backward_case(x[0, :5], x[1], x[2, :, :3], window_mask(7, (1, 3))[:5], 0.5, 3, "random")
    allowed = window_mask(6, (1, 1))
    allowed[2] = False  # query 3 attends no key: its P is 0, never NaN
    yield _tile_backward_case(*randn(3, 6, 2, seed=4), allowed, 2.0, 5, "random, query 3 sees no key")


def _backward_with(q, k, v, allowed, out, lse, grad_out, grad_lse, scale, *, lse_term=True, masked=True,
                   scaled=True):
    """dq, dk, dv of one tile as the chapter derives them, or with one of its steps left out."""
    lse = torch.where(lse == float("-inf"), float("inf"), lse)  # a query without keys: P = 0
    p = torch.exp(scale * q @ k.T - lse[:, None])
    p = p.masked_fill(~allowed, 0.0) if masked else p
    row_term = (grad_out * out).sum(dim=1) - (grad_lse if lse_term else 0)  # D
    ds = p * (grad_out @ v.T - row_term[:, None])
    factor = scale if scaled else 1.0
    return factor * ds @ k, factor * ds.T @ q, p.T @ grad_out


TILE_BACKWARD = (
    Suspect(lambda *args: _backward_with(*args, lse_term=False),
            "D = dO . o - dlse: the log-sum-exp is an output too, and its gradient adds p dlse to ds"),
    Suspect(lambda *args: _backward_with(*args, masked=False),
            "P is 0 outside the window: exp(s - lse) of a key the query may not attend must be set to 0"),
    Suspect(lambda *args: _backward_with(*args, scaled=False) if args[-1] != 1 else None,
            "s = scale q . k, so dQ = scale dS K and dK = scale dS^T Q"),
)

# ---------------------------------------------------------------------------------------------
# Exercise 17.2: the kernel's tile products, predicted.

PREDICTED_KERNEL = 64, (20, 0), 16  # L, the window, the tile size (the chapter's causal example)


def tile_products(function: str) -> int:
    """The matrix products one visit of a loop of the Triton kernels makes, read off their source (the
    module is parsed, not imported, so no triton is needed): its ``tl.dot`` calls, and those of the
    helpers it calls that compute the scores (``_key_tile``, which calls ``_scores``)."""
    source = Path(importlib.util.find_spec("swa_tutorial.backends.triton.kernels").origin).read_text()
    functions = {f.name: f for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)}
    calls = [ast.unparse(c.func) for c in ast.walk(functions[function]) if isinstance(c, ast.Call)]
    helpers = [name for name in calls if name in ("_key_tile", "_scores")]
    return calls.count("tl.dot") + sum(tile_products(helper) for helper in helpers)


def _kernel_products_expected() -> dict:
    L, (left, right), size = PREDICTED_KERNEL
    cpu = torch.device("cpu")
    forward = span_table(L, left, right, size, size, cpu)  # query tiles' key tiles
    keys = span_table(L, right, left, size, size, cpu)  # key tiles' query tiles
    visits = int((forward[:, 3] - forward[:, 0]).sum())
    key_visits = int((keys[:, 3] - keys[:, 0]).sum())
    return {"tiles_visited": visits, "forward_products": visits * tile_products("_forward_tiles"),
            "backward_products": visits * tile_products("_dq_tiles") + key_visits * tile_products("_dkdv_tiles")}


def _kernel_products() -> Iterator[Case]:
    return prediction_cases("kernel_products", _kernel_products_expected(),
                            "span_table(64, 20, 0, 16, 16) and the tl.dot calls of the kernels' loops")


KERNEL_PRODUCTS = (
    prediction_suspect("tiles_visited", 16, "the kernel visits only the key tiles of each query tile's span, "
                                         "start .. end - 1 of the span table"),
    prediction_suspect("tiles_visited", 10, "the tiles of a causal window reach back only: query tile I visits "
                                         "the key tiles start .. end - 1 of its row, none after its own"),
    prediction_suspect("forward_products", 9, "two products per visited tile: the scores Q K^T and P V"),
    prediction_suspect("backward_products", 45, "that is FlashAttention-2's five per tile: this kernel computes S "
                                             "and dP = dO V^T in both passes, 3 + 4 = 7"),
    prediction_suspect("backward_products", 36, "the four products the gradients need: each pass also recomputes "
                                             "S = Q K^T, 3 + 4 = 7 per tile"),
    prediction_suspect("backward_products", 27, "the dK, dV pass visits the tiles too, with 4 products each, "
                                             "besides the dQ pass's 3"),
)


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
        if not pair_of_ints(got):
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


# ---------------------------------------------------------------------------------------------
# Chapter 19: reading the benchmark files.

BENCHMARK_DATA = Path(__file__).resolve().parents[3] / "book" / "data"  # the committed runs
PREDICTED_SDPA = 65536, {"bfloat16": 3, "float32": 5}  # Exercise 19.1: L, and the masks' bytes per L^2


def _runs() -> dict:
    if not BENCHMARK_DATA.is_dir():
        raise FileNotFoundError(f"the committed benchmark files are not at {BENCHMARK_DATA}: run this exercise "
                                "in a checkout of the repository")
    return load_runs(BENCHMARK_DATA)


def _close_mib(expected: float, got) -> str | None:
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"got {got!r}, expected a number of MiB"
    if abs(got - expected) > 1e-3 * expected:
        return f"got {got:.0f} MiB, the run measured {expected:.0f} MiB ({got / expected:.3f} times that)"
    return None


def _sdpa_memory() -> Iterator[Case]:
    L = PREDICTED_SDPA[0]
    for dtype in PREDICTED_SDPA[1]:
        measured = by_impl(_runs()[f"gpu-{dtype}-fwd.json"], dtype)["dense_sdpa", L]["memory_bytes"] / 2**20
        yield Case(f'sdpa_memory["{dtype}_mib"]', (f"{dtype}_mib",), measured, _close_mib,
                   f"the peak memory of dense_sdpa at L = {L} in gpu-{dtype}-fwd.json")


def _mib(L: int, mask_bytes: int, output_bytes: int) -> float:
    """Masks of ``mask_bytes`` per L^2, and the output [1, L, 12, 64] of ``output_bytes`` a number."""
    return (mask_bytes * L * L + L * 12 * 64 * output_bytes) / 2**20


SDPA_MEMORY = tuple(
    prediction_suspect(k, value, cause)
    for k, value, cause in [
        ("bfloat16_mib", _mib(65536, 3, 0), "the masks alone: the call also allocates its output [B, L, H, d]"),
        ("bfloat16_mib", _mib(65536, 5, 2), "5 L^2 is float32's: the additive mask has the input's dtype, 2 bytes "
                                            "a number in bfloat16, and the bool mask 1"),
        ("bfloat16_mib", _mib(65536, 1, 2), "the bool mask alone: SDPA makes an additive copy of it in the input's "
                                            "dtype inside the call"),
        ("float32_mib", _mib(65536, 5, 0), "the masks alone: the call also allocates its output [B, L, H, d]"),
        ("float32_mib", _mib(65536, 3, 4), "the additive mask has the input's dtype, 4 bytes a number in float32: "
                                           "5 L^2 with the bool mask"),
    ])


def _same_length(expected, got) -> str | None:
    if isinstance(got, bool) or not isinstance(got, int):
        return f"got {got!r}, expected a length (an int), or 0"
    if got != expected:
        return (f"got {got}, expected {expected}" if expected else
                f"got {got}, expected 0: the chunked path beats dense SDPA by more than the noise at no length")
    return None


def _timings(ratios) -> dict:
    """A small run of dense SDPA and the chunks: at L = 1024, 2048, ... the times (dense, chunks)."""
    lengths = [1024 * 2**n for n in range(len(ratios))]
    results = [{"impl": impl, "L": L, "dtype": "float32", "mode": "fwd", "status": "ok", "times_s": times}
               for L, pair in zip(lengths, ratios) for impl, times in zip(("dense_sdpa", "swa"), pair)]
    return {"config": {"lengths": lengths}, "results": results}


def _crossover_length() -> Iterator[Case]:
    steady, spread = [1.0] * 5, [0.9, 1.0, 1.1, 1.2, 1.3]
    made = {"a tie within noise, then a win": _timings([(steady, [2.0] * 5), ([x + 0.1 for x in spread], spread),
                                                        ([4.0] * 5, [2.0] * 5)]),
            "never a win": _timings([(steady, [2.0] * 5), (steady, [1.5] * 5)])}
    for name, run in made.items():
        yield Case(f"crossover_length(run, 'float32'): {name}", (run, "float32"), crossover(run, "float32") or 0,
                   _same_length, "swa_tutorial.bench.compare on each length")
    for name, run in _runs().items():
        if run["config"]["modes"] == ["fwd"]:
            dtype = run["config"]["dtypes"][0]
            yield Case(f"crossover_length(runs[{name!r}], {dtype!r})", (run, dtype), crossover(run, dtype) or 0,
                       _same_length, "swa_tutorial.bench.compare on each length")


def _first_win(run: dict, dtype: str, wins) -> int:
    res = by_impl(run, dtype)
    for L in run["config"]["lengths"]:
        dense, swa = res.get(("dense_sdpa", L), {}), res.get(("swa", L), {})
        if dense.get("status") == swa.get("status") == "ok" and wins(compare(dense["times_s"], swa["times_s"])):
            return L
    return 0


CROSSOVER_LENGTH = (
    Suspect(lambda run, dtype: _first_win(run, dtype, lambda c: c["ratio"] > 1),
            "a ratio above 1 whose quartile range contains 1 is a tie within noise: it does not count"),
    Suspect(lambda run, dtype: _first_win(run, dtype, lambda c: c["ratio"] < 1 and not c["within_noise"]),
            "the ratio is dense SDPA's time over the chunked path's: above 1 where the chunks win"),
)

EXERCISES = [
    Exercise("online_step", "16_tiles",
             "online_step(row_max, row_sum, acc, scores, values): one key tile folded into the running softmax",
             "swa_tutorial.steps.online_softmax.step", _online_step),
    Exercise("tile_kind", "16_tiles",
             "tile_kind(I, J, L, left, right, T_q, T_k): 'full', 'partial' or 'skipped'",
             "the kernel's key_tile_span", _tile_kind),
    Exercise("tile_backward", "17_tiles_kernel",
             "tile_backward(q, k, v, allowed, out, lse, grad_out, grad_lse, scale): dq, dk, dv of one tile",
             "autograd through the masked softmax", _tile_backward, TILE_BACKWARD),
    Exercise("kernel_products", "17_tiles_kernel",
             "kernel_products: predict the tiles the kernel visits and its products, forward and backward",
             "swa_tutorial.core.tiling.span_table and the kernels' source", _kernel_products, KERNEL_PRODUCTS,
             prediction=True),
    Exercise("halo_range", "18_sequence_parallel",
             "halo_range(rank, lengths, window): the positions start .. stop - 1 of the rank's keys and halo",
             "swa_tutorial.distributed.halo_plan", _halo_range),
    Exercise("halo_bytes_sent", "18_sequence_parallel",
             "halo_bytes_sent(lengths, window, token_bytes): the bytes each rank sends its neighbours",
             "swa_tutorial.distributed.halo_bytes", _halo_bytes_sent),
    Exercise("sdpa_memory", "19_benchmarks",
             "sdpa_memory: predict dense SDPA's peak memory on the H200 at L = 65536, from the masks and the output",
             "the committed GPU runs", _sdpa_memory, SDPA_MEMORY, prediction=True),
    Exercise("crossover_length", "19_benchmarks",
             "crossover_length(run, dtype): the shortest L at which the chunks beat dense SDPA beyond the noise, or 0",
             "swa_tutorial.tutorial.benchmark_report.crossover", _crossover_length, CROSSOVER_LENGTH),
]
