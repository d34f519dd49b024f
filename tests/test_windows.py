"""Window shapes: the (left, right) and dilation forms, and the two references that follow them.

The mask is checked against its definition written as plain Python comparisons; the dense and
loop references, built differently, must agree on random windows, dilations and padding.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cases import assert_close64
from swa_tutorial import dense_attention, dense_band_mask, loop_attention
from swa_tutorial.core.windows import (
    check_dilation,
    check_window,
    clip_window,
    in_window,
    key_offsets,
    keys_per_query,
    lean_window_mask,
    window_mask,
)

sides = st.one_of(st.none(), st.integers(0, 12))


@given(st.integers(0, 14), sides, sides, st.integers(1, 16))
def test_window_mask_is_its_definition(L, left, right, d):
    mask = window_mask(L, (left, right), dilation=d)
    assert mask.shape == (L, L) and mask.dtype == torch.bool
    lo = -float("inf") if left is None else -left * d
    hi = float("inf") if right is None else right * d
    for i in range(L):
        for j in range(L):
            assert bool(mask[i, j]) == ((j - i) % d == 0 and lo <= j - i <= hi)


@given(st.integers(0, 14))
def test_key_offsets_are_key_minus_query(L):
    offsets = key_offsets(L)
    assert offsets.shape == (L, L) and offsets.dtype == torch.int64
    assert all(int(offsets[i, j]) == j - i for i in range(L) for j in range(L))


@given(st.integers(-40, 40), st.integers(0, 12), st.integers(0, 12), st.integers(1, 5))
def test_in_window_is_its_definition(offset, left, right, d):
    inside = in_window(torch.tensor(offset), (left, right), d)
    assert bool(inside) == (offset % d == 0 and -left * d <= offset <= right * d)


@given(st.integers(0, 14), sides, sides)
def test_lean_window_mask_is_the_window_mask(L, left, right):
    assert torch.equal(lean_window_mask(L, (left, right)), window_mask(L, (left, right)))


@pytest.mark.parametrize("window, keys", [((2, 3), 6), ((0, 0), 1), ((7, 0), 8), ((None, 0), None), ((3, None), None)])
def test_keys_per_query_counts_the_window(window, keys):
    assert keys_per_query(window) == keys
    if keys is not None:  # away from the ends, the middle row of a long enough mask
        assert int(window_mask(2 * keys + 1, window)[keys].sum()) == keys


@given(st.integers(1, 14), st.integers(1, 14))
def test_int_window_is_the_symmetric_band(L, w):
    assert torch.equal(dense_band_mask(L, w), window_mask(L, (w, w)))
    pos = torch.arange(L)
    assert torch.equal(dense_band_mask(L, w), (pos[:, None] - pos[None, :]).abs() <= w)


def test_huge_windows_do_not_overflow():
    assert dense_band_mask(4, 2**63).all()
    assert window_mask(4, (2**70, 0)).equal(torch.ones(4, 4, dtype=torch.bool).tril())
    assert window_mask(4, (2**70, 2**70), dilation=10**30).equal(torch.eye(4, dtype=torch.bool))


@pytest.mark.parametrize(
    "window, expected",
    [(3, (3, 3)), ((2, 0), (2, 0)), ([0, 0], (0, 0)), ((None, 0), (None, 0)), ((5, None), (5, None))],
)
def test_window_forms(window, expected):
    assert check_window(window) == expected


@pytest.mark.parametrize(
    "window, error, message",
    [
        (0, ValueError, "an int window is one-sided and >= 1, got 0"),
        (-2, ValueError, "got -2"),
        (True, TypeError, "window must be an int w >= 1 or a pair"),
        (2.0, TypeError, "got float"),
        ("3", TypeError, "got str"),
        ((1, 2, 3), ValueError, "got a sequence of length 3"),
        ((1,), ValueError, "got a sequence of length 1"),
        ((-1, 2), ValueError, "window's left must be an int >= 0 or None, got -1"),
        ((1, False), TypeError, "window's right must be an int >= 0 or None, got bool"),
        ((1, 2.5), TypeError, "window's right must be an int >= 0 or None, got float"),
    ],
)
def test_bad_windows(window, error, message):
    with pytest.raises(error, match=message):
        check_window(window)


@pytest.mark.parametrize(
    "dilation, heads, error, message",
    [
        (0, 2, ValueError, "dilation must be made of ints >= 1, got 0"),
        (True, 2, TypeError, "dilation must be an int >= 1 or a sequence of H ints"),
        (1.5, 2, TypeError, "got float"),
        ((1, 2), 3, ValueError, r"one int per head \(H = 3\), got 2 values"),
        ((1, 0, 2), 3, ValueError, "got 0"),
        ((1, 2.0), 2, TypeError, "made of ints >= 1, got float"),
    ],
)
def test_bad_dilations(dilation, heads, error, message):
    with pytest.raises(error, match=message):
        check_dilation(dilation, heads)


def test_dilation_forms():
    assert check_dilation(3, 4) == (3, 3, 3, 3)
    assert check_dilation([1, 2], 2) == (1, 2)


def test_clip_window():
    assert clip_window((None, 3), 5) == (5, 3)
    assert clip_window((9, 0), 5) == (5, 0)
    assert clip_window((None, None), -1) == (0, 0)


@st.composite
def window_problems(draw, max_len=40):
    L = draw(st.integers(1, max_len))
    H = draw(st.integers(1, 3))
    left, right = draw(sides), draw(sides)
    if left == right == 0 or draw(st.booleans()):
        window = (left, right)
    else:
        window = draw(st.integers(1, 12))
    dilation = draw(st.one_of(st.integers(1, L + 1), st.lists(st.integers(1, 6), min_size=H, max_size=H)))
    padding = draw(st.sampled_from(("none", "random", "all")))
    return L, H, window, dilation, padding, draw(st.integers(0, 2**31))


@given(window_problems())
def test_dense_and_loop_references_agree(problem):
    L, H, window, dilation, padding, seed = problem
    g = torch.Generator().manual_seed(seed)
    B, d = 2, 3
    q, k, v = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64) for _ in range(3))
    mask = None if padding == "none" else torch.rand(B, L, generator=g) < (0.4 if padding == "random" else 1.1)
    kwargs = dict(key_padding_mask=mask, dilation=dilation)
    dense = dense_attention(q, k, v, window, **kwargs)
    assert_close64(loop_attention(q, k, v, window, **kwargs), dense)
    if padding == "all":
        assert (dense == 0).all()


def test_dense_reference_by_hand():
    """One query's output written out: token 5 of 8 with window (2, 1) and dilation 2 attends
    tokens 1, 3, 5 and 7 (offsets -4, -2, 0, +2)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 1, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out = dense_attention(q, k, v, (2, 1), dilation=2, scale=1.0)
    keys = [1, 3, 5, 7]
    p = torch.softmax(torch.stack([q[0, 5, 0] @ k[0, j, 0] for j in keys]), 0)
    assert_close64(out[0, 5, 0], sum(p[n] * v[0, j, 0] for n, j in enumerate(keys)))


@pytest.mark.parametrize("fn", (dense_attention, loop_attention))
def test_nan_spreads_and_is_never_hidden(fn):
    """A NaN query or key makes NaN exactly the rows that score it inside their window; a NaN
    value reaches at least those rows (dense attention's zero weights carry it further: 0 x NaN)."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 10, 1, 4, generator=g, dtype=torch.float64) for _ in range(3))
    in_window = torch.zeros(10, dtype=torch.bool)
    in_window[3:6] = True  # window 1 around token 4
    for x, rows in ((q, in_window.logical_and(torch.arange(10) == 4)), (k, in_window), (v, None)):
        bad = x.clone()
        bad[0, 4, 0, 0] = float("nan")
        inputs = [bad if y is x else y for y in (q, k, v)]
        nan_rows = fn(*inputs, 1)[0, :, 0].isnan().any(dim=-1)  # L
        if rows is None:
            assert nan_rows[in_window].all()
        else:
            assert torch.equal(nan_rows, rows)
