"""The online softmax of swa_tutorial.steps.online_softmax against the softmax over all keys at once."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from swa_tutorial import dense_attention, labelled_qkv
from swa_tutorial.steps.online_softmax import RowState, finish, start, step
from swa_tutorial.core.softmax import lse_from_probs, masked_softmax
from swa_tutorial.core.windows import window_mask


def fold(scores, allowed, values, cuts):
    """(out, lse) of the online softmax, the keys split into tiles at the positions ``cuts``."""
    rows, n = scores.shape
    state = start(rows, values.shape[1], scores.dtype)
    bounds = [0, *cuts, n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = step(state, scores[:, a:b].masked_fill(~allowed[:, a:b], float("-inf")), values[a:b])
    return finish(state)


@st.composite
def problems(draw):
    rows, n, d_v = draw(st.integers(1, 6)), draw(st.integers(1, 24)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=n)) - {n}) if n > 1 else []
    density = draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
    spread = draw(st.sampled_from([1.0, 30.0, 1e3]))  # large scores: exp would overflow unshifted
    return rows, n, d_v, seed, cuts, density, spread


@given(problems())
def test_fold_equals_the_softmax_over_all_keys(problem):
    rows, n, d_v, seed, cuts, density, spread = problem
    g = torch.Generator().manual_seed(seed)
    scores = spread * torch.randn(rows, n, generator=g, dtype=torch.float64)
    allowed = torch.rand(rows, n, generator=g) < density
    values = torch.randn(n, d_v, generator=g, dtype=torch.float64)
    out, lse = fold(scores, allowed, values, cuts)
    probs, expected_lse = masked_softmax(scores, allowed)
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out, probs @ values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-12, atol=1e-12)


@given(st.integers(1, 6), st.integers(1, 24), st.sampled_from([1.0, 30.0, 1e3]), st.integers(0, 2**16))
def test_lse_from_probs_is_the_logsumexp(rows, n, spread, seed):
    scores = spread * torch.randn(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lse = lse_from_probs(scores.amax(dim=-1), scores.softmax(dim=-1))
    torch.testing.assert_close(lse, scores.logsumexp(dim=-1), rtol=1e-12, atol=1e-12)


def test_a_row_with_no_key_gets_zero_and_minus_infinity():
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    allowed = torch.tensor([[False, False, False], [False, True, False]])
    values = torch.ones(3, 2, dtype=torch.float64)
    out, lse = fold(scores, allowed, values, [1, 2])
    assert out[0].tolist() == [0.0, 0.0] and lse[0].item() == float("-inf")
    assert out[1].tolist() == [1.0, 1.0] and lse[1].item() == 5.0


def test_state_between_tiles_is_relative_to_the_running_maximum():
    # one row, scores 1, 3 then 2: after the first tile m = 3, l = e^-2 + 1; the second tile
    # does not move m, so l only grows by e^-1
    state = step(start(1, 1), torch.tensor([[1.0, 3.0]], dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64))
    assert state.row_max.item() == 3.0
    assert state.row_sum.item() == pytest.approx(torch.e**-2 + 1, rel=1e-15)
    state = step(state, torch.tensor([[2.0]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    assert state.row_max.item() == 3.0
    assert state.row_sum.item() == pytest.approx(torch.e**-2 + 1 + torch.e**-1, rel=1e-15)
    assert state.acc.item() == pytest.approx(state.row_sum.item(), rel=1e-15)  # values of 1


def test_labelled_rows_tile_by_tile_equal_dense_attention():
    L = 8
    q, k, v = labelled_qkv(L)
    S = q[0, :, 0] @ k[0, :, 0].T  # L x L, the labels 10 i + j
    for window in [(2, 2), (2, 0), (0, 3), (7, 7)]:
        allowed = window_mask(L, window)
        out, _ = fold(S, allowed, v[0, :, 0], [2, 4, 6])
        torch.testing.assert_close(out, dense_attention(q, k, v, window, scale=1.0)[0, :, 0], rtol=0, atol=1e-13)


def test_nan_score_is_not_hidden():
    scores = torch.tensor([[0.0, float("nan")], [0.0, 1.0]], dtype=torch.float64)
    out, lse = fold(scores, torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 1, dtype=torch.float64), [1])
    assert out[0].isnan().all() and lse[0].isnan()
    assert not out[1].isnan().any()


def test_start_and_bad_shapes():
    state = start(3, 2, torch.float32)
    assert isinstance(state, RowState) and state.acc.shape == (3, 2) and state.acc.dtype == torch.float32
    assert (state.row_max == float("-inf")).all() and (state.row_sum == 0).all()
    with pytest.raises(ValueError, match="scores"):
        step(state, torch.zeros(2, 4), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="values"):
        step(state, torch.zeros(3, 4), torch.zeros(4, 3))
