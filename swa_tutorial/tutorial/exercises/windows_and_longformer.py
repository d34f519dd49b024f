"""The exercises of chapters 12 to 15: window shapes, dilation, generation, Longformer's global tokens.

Each exercise lists typical wrong computations (:class:`~.framework.Suspect`): when an answer's
result equals one, ``check`` names the mistake as the likely cause.
"""

from __future__ import annotations

from typing import Iterator

import torch

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.core.windows import window_mask
from swa_tutorial.decoding import RollingKVCache
from swa_tutorial.integrations.conventions import from_flash_attn, from_mistral
from swa_tutorial.reference import dense_attention, dense_longformer_attention
from swa_tutorial.steps.shift import shifted_layout, symmetric_window
from swa_tutorial.tutorial.exercises.framework import (
    Case,
    Compare,
    Exercise,
    Suspect,
    generator,
    pair_of_ints,
    randn,
    same_int,
    same_ints,
    same_tensor,
)

# ---------------------------------------------------------------------------------------------
# Longformer's global attention.


def _longformer_keys() -> Iterator[Case]:
    g = generator(0)
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


def _window_keys(i: int, L: int, w: int) -> list[int]:
    return list(range(max(0, i - w), min(L, i + w + 1)))


LONGFORMER_KEYS = (
    Suspect(lambda i, L, w, g: sorted(_window_keys(i, L, w) + list(g)),
            "a key both in the window and global is counted twice: the keys are a union, each once"),
    Suspect(lambda i, L, w, g: sorted(set(_window_keys(i, L, w)) | set(g)) if i in g else None,
            "a global token attends to every token: its row is full, not its window and the global tokens"),
    Suspect(lambda i, L, w, g: _window_keys(i, L, w) if i not in g else None,
            "every token attends to the global tokens, also those outside its window"),
    Suspect(lambda i, L, w, g: list(range(L)) if i in g else sorted(set(range(i - w, i + w + 1)) | set(g)),
            "the window is cut at both ends of the sequence: keys lie in 0 .. L - 1"),
    Suspect(lambda i, L, w, g: list(range(L)) if i in g else sorted(set(range(max(0, i - w), min(L, i + w)))
                                                                    | set(g)),
            "the window holds key i + w too: range(i - w, i + w + 1)"),
)


def _merge_softmaxes() -> Iterator[Case]:
    for seed, spread in enumerate((1.0, 30.0, 1000.0)):
        scores, values = randn(5, 9, seed=seed) * spread, randn(9, 3, seed=seed + 10)
        first = torch.rand(9, generator=generator(seed)) < 0.5
        parts = [(scores[:, m].softmax(-1) @ values[m], scores[:, m].logsumexp(-1)) for m in (first, ~first)]
        yield Case(f"merge_softmaxes(out1, lse1, out2, lse2): 5 queries, keys split {int(first.sum())} + "
                   f"{int((~first).sum())}, scores of spread {spread:g}", (*parts[0], *parts[1]),
                   scores.softmax(-1) @ values, same_tensor(("query", "component"), exact=False),
                   "one softmax over all the keys")


# ---------------------------------------------------------------------------------------------
# Windows of every shape, dilation, generation, a sequence over several devices.


def _merge_by_exponentials(out1, lse1, out2, lse2):
    e1, e2 = lse1.exp()[:, None], lse2.exp()[:, None]
    return (e1 * out1 + e2 * out2) / (e1 + e2)


MERGE_SOFTMAXES = (
    Suspect(_merge_by_exponentials, "e^lse overflows once the scores pass about 700 (float64): weigh each part by "
                                    "e^(lse_part - lse) with lse = logaddexp(lse1, lse2)"),
    Suspect(lambda out1, lse1, out2, lse2: (out1 + out2) / 2,
            "a plain average: each part weighs by its share of the whole sum, e^(lse_part - lse)"),
)


def _symmetric_window_compare(left: int, right: int) -> Compare:
    """The band (w, shift) must hold the window, be the narrowest, and end on its right edge."""

    def compare(expected, got) -> str | None:
        if not pair_of_ints(got):
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
        q, k, v = randn(3, 2, L, 2, 4, seed=seed)
        yield Case(f"attend_by_slices(q, k, v, window={window}, d={d}) with [B, L, H, d_h] = [2, {L}, 2, 4]",
                   (q, k, v, window, d), dense_attention(q, k, v, window, dilation=d), _with_class(d),
                   f"dense_attention(q, k, v, {window}, dilation={d})")


def _by_slices_with(q, k, v, window, d, class_window):
    out = torch.zeros_like(v)
    for kappa in range(d):
        out[:, kappa::d] = sliding_window_attention(q[:, kappa::d], k[:, kappa::d], v[:, kappa::d], class_window)
    return out


def _times(window, d):
    left, right = (window, window) if isinstance(window, int) else window
    return left * d, right * d


ATTEND_BY_SLICES = (
    Suspect(lambda q, k, v, window, d: _by_slices_with(q, k, v, window, 1, window) if d > 1 else None,
            "the ordinary window over the whole sequence attends the neighbours of every class: attend each class "
            "x[:, kappa::d] alone"),
    Suspect(lambda q, k, v, window, d: _by_slices_with(q, k, v, window, d, _times(window, d)) if d > 1 else None,
            "inside a class the places are consecutive, so the class's window is the ordinary (left, right), "
            "not times d"),
)


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
        q, k, v = randn(3, 1, t + 1, 1, d, seed=seed)
        cache = RollingKVCache(left, batch=1, heads=1, head_dim=d, dtype=torch.float64)
        cache.prefill(q[:, :t], k[:, :t], v[:, :t])
        cache.step(q[:, t:], k[:, t:], v[:, t:])  # token t, the newest
        args = (q[0, t, 0], cache.keys[0, :, 0].clone(), cache.values[0, :, 0].clone(), cache.positions.clone())
        yield Case(f"decode_step(q, keys, values, positions={cache.positions.tolist()}): token {t}, "
                   f"left={left}, d={d}", args, dense_attention(q, k, v, (left, 0))[0, t, 0],
                   same_tensor(("component",), exact=False), f"dense_attention(q, k, v, ({left}, 0))[:, {t}]")


PREDICTED_WINDOW = 20, (1, 6)  # Exercise 12.3: L and the window


def _window_1_6_expected() -> dict:
    L, (left, right) = PREDICTED_WINDOW
    w, shift, lead, padded = shifted_layout(L, left, right)
    return {"w": w, "shift": shift, "lead": lead, "padded_length": padded, "num_chunks": padded // w - 1,
            "extra_diagonals": [o for o in range(shift - w, shift + w + 1) if not -left <= o <= right]}


def prediction_cases(name: str, expected: dict, source: str) -> Iterator[Case]:
    """One case per entry of a prediction of ints (or lists of ints): ``name["key"]``."""
    for key, value in expected.items():
        yield Case(f'{name}["{key}"]', (key,), value, same_ints if isinstance(value, list) else same_int, source)


def _window_1_6() -> Iterator[Case]:
    return prediction_cases("window_1_6", _window_1_6_expected(), "shifted_layout(20, 1, 6)")


def prediction_suspect(key: str, value, cause: str) -> Suspect:
    """A wrong value of one entry of a prediction, and the mistake that gives it."""
    return Suspect(lambda k: value if k == key else None, cause)


WINDOW_1_6 = (
    prediction_suspect("w", 3, "(left + right) / 2 = 3.5 rounds up: the band 2w + 1 must hold left + right + 1 "
                                "= 8 diagonals, so w = ceil((left + right) / 2)"),
    prediction_suspect("w", 6, "a band of the longer side, 6, holds the window too, but centred on another "
                                "diagonal a narrower one does: w = ceil((left + right) / 2)"),
    prediction_suspect("shift", -2, "the sign: the band's right edge shift + w sits on the window's right edge, "
                                     "shift = right - w, to the right of the main diagonal here"),
    prediction_suspect("shift", 0, "a band on the main diagonal holds this window only with w = 6: the "
                                    "narrowest band is centred on diagonal right - w"),
    prediction_suspect("lead", 0, "a shift > 0 would move the keys to rows before the first: the queries get "
                                   "lead = shift zero rows in front instead"),
    prediction_suspect("padded_length", 20, "L itself is a multiple of w, but the lead's rows come first: L' is "
                                             "L + |shift| rounded up to a multiple of w"),
    prediction_suspect("padded_length", 22, "L + |shift| = 22 is then rounded up to a multiple of w = 4"),
    prediction_suspect("num_chunks", 4, "C = L'/w - 1 at the padded length L' = 24, not at L = 20"),
    prediction_suspect("num_chunks", 6, "L'/w counts blocks of w rows; the chunks, two blocks long, are one "
                                         "fewer"),
    prediction_suspect("extra_diagonals", [], "left + right + 1 = 8 diagonals in a band of 2w + 1 = 9: an odd "
                                               "left + right leaves one diagonal over"),
    prediction_suspect("extra_diagonals", [7], "the band's right edge is the window's (shift + w = right): the "
                                                "diagonal over is at the left edge, shift - w"),
)

DECODE_STEP = (
    Suspect(lambda q, keys, values, positions: (keys @ q / q.shape[0] ** 0.5).softmax(0) @ values,
            "the empty slots (position -1) hold zero keys, which score 0 and still get weight: mask them"),
    Suspect(lambda q, keys, values, positions: (keys @ q).masked_fill(positions < 0, float("-inf")).softmax(0)
            @ values, "the scores are scaled by 1/sqrt(d), dense_attention's default"),
)

EXERCISES = [
    Exercise("symmetric_window", "12_window_shapes",
             "symmetric_window(left, right): (w, shift) of the narrowest band about a shifted diagonal",
             "swa_tutorial.steps.shift.symmetric_window", _symmetric_window),
    Exercise("flash_window_size", "12_window_shapes",
             "flash_window_size(W): FlashAttention's window_size for Mistral's sliding_window=W",
             "swa_tutorial.integrations.conventions", _flash_window_size),
    Exercise("window_1_6", "12_window_shapes",
             "window_1_6: predict the band, shift, lead, padded length and chunks of the window (1, 6) on 20 tokens",
             "swa_tutorial.steps.shift.shifted_layout", _window_1_6, WINDOW_1_6, prediction=True),
    Exercise("dilated_keys", "13_dilation",
             "dilated_keys(i, left, right, d, L): the sorted keys query i attends with dilation d",
             "swa_tutorial.core.windows.window_mask", _dilated_keys),
    Exercise("attend_by_slices", "13_dilation",
             "attend_by_slices(q, k, v, window, d): dilated attention, one residue class at a time",
             "swa_tutorial.dense_attention", _attend_by_slices, ATTEND_BY_SLICES),
    Exercise("cache_positions", "14_generation",
             "cache_positions(T, left): the token each slot of the rolling cache holds after T tokens",
             "swa_tutorial.RollingKVCache", _cache_positions),
    Exercise("decode_step", "14_generation",
             "decode_step(q, keys, values, positions): the newest token's output from the cache",
             "swa_tutorial.dense_attention", _decode_step, DECODE_STEP),
    Exercise("longformer_keys", "15_longformer",
             "longformer_keys(i, L, w, global_tokens): the sorted keys query i attends, each once",
             "swa_tutorial.reference.dense_longformer_attention", _longformer_keys, LONGFORMER_KEYS),
    Exercise("merge_softmaxes", "15_longformer",
             "merge_softmaxes(out1, lse1, out2, lse2): one softmax from two over disjoint keys",
             "one softmax over all the keys", _merge_softmaxes, MERGE_SOFTMAXES),
]
