"""Each step of the chunked algorithm against its definition, written out with plain indexing.

Every expected tensor here is built the slow, obvious way (explicit slices, index loops, the
dense L x L product) and compared exactly or, for products in float64, within 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cases import assert_close64
from swa_tutorial import (band_mask, band_scores, band_softmax, band_times_values, band_to_dense, chunk, chunk_scores,
                          dense_band_mask, dense_to_band, merge_heads, num_chunks, padded_length, skew, split_heads,
                          unskew, value_chunks)

seeds = st.integers(0, 2**32 - 1)


def randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@st.composite
def chunkable(draw, max_blocks: int = 12):
    """(L, w) with L a multiple of w and at least 2w: the lengths the chunk steps accept."""
    w = draw(st.integers(1, 10))
    return draw(st.integers(2, max_blocks)) * w, w


def shares_storage(view: torch.Tensor, base: torch.Tensor) -> bool:
    return view.untyped_storage().data_ptr() == base.untyped_storage().data_ptr()


LAYOUTS = ("contiguous", "transposed", "sliced")


def laid_out(layout: str, *shape: int, seed: int) -> torch.Tensor:
    """A random float64 tensor of ``shape``: contiguous, or a view whose last two dims are
    transposed in memory, or a slice that starts inside a larger tensor (a storage offset)."""
    if layout == "transposed":
        return randn(*shape[:-2], shape[-1], shape[-2], seed=seed).transpose(-1, -2)
    if layout == "sliced":
        return randn(*shape[:-2], shape[-2] + 3, shape[-1] + 2, seed=seed)[..., 2:-1, 1:-1]
    return randn(*shape, seed=seed)


# Step 1: the number of chunks.


@given(chunkable(max_blocks=50))
def test_num_chunks_is_L_over_w_minus_1(lw):
    L, w = lw
    assert num_chunks(L, w) == L // w - 1
    assert num_chunks(L, w) == chunk(torch.zeros(1, L, 1), w).shape[1]  # the chunks the view holds


@pytest.mark.parametrize("L, w", [(0, 1), (1, 1), (3, 2), (7, 2), (5, 3), (9, 5)])
def test_num_chunks_rejects_lengths_that_do_not_chunk(L, w):
    message = rf"seq_len must be a multiple of window and at least 2 \* window = {2 * w}"
    with pytest.raises(ValueError, match=message):
        num_chunks(L, w)


@pytest.mark.parametrize("w, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_num_chunks_rejects_bad_windows(w, error):
    with pytest.raises(error, match="window must be an int >= 1"):
        num_chunks(8, w)


@given(st.integers(1, 400), st.integers(1, 60))
def test_padded_length_is_the_shortest_chunkable_length(L, w):
    Lp = padded_length(L, w)
    assert Lp >= L and Lp % w == 0 and Lp >= 2 * w
    assert Lp == 2 * w or Lp - w < L  # one block less would no longer hold the sequence


# Step 2: merging batch and heads.


@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 4), st.integers(1, 5), seeds)
def test_merge_heads_rows_and_round_trip(B, L, H, d, seed):
    x = randn(B, L, H, d, seed=seed)
    merged = merge_heads(x)
    assert merged.shape == (B * H, L, d)
    for b in range(B):
        for h in range(H):
            assert torch.equal(merged[b * H + h], x[b, :, h])
    back = split_heads(merged, B)
    assert back.shape == x.shape and torch.equal(back, x)


# Step 3: the overlapping chunk view.


layouts = st.sampled_from(LAYOUTS)


@given(chunkable(), st.sampled_from((2, 3)), st.integers(1, 4), st.integers(1, 3), layouts, seeds)
def test_chunk_is_a_view_equal_to_explicit_slices(lw, size_in_windows, BH, d, layout, seed):
    L, w = lw
    size = size_in_windows * w
    if L < size:
        L += w  # 3w chunks need L >= 3w
    x = laid_out(layout, BH, L, d, seed=seed)
    chunks = chunk(x, w, size=None if size == 2 * w else size)
    count = (L - size) // w + 1
    explicit = torch.stack([x[:, c * w : c * w + size] for c in range(count)], dim=1)
    assert chunks.shape == (BH, count, size, d)
    assert torch.equal(chunks, explicit)
    assert torch.equal(chunks, x.unfold(1, size, w).transpose(-1, -2))  # PyTorch's own sliding view
    assert shares_storage(chunks, x)
    x[0, w, 0] = 1234.5  # token w sits in chunk 0 (row w) and in chunk 1 (row 0), if there is one
    assert chunks[0, 0, w, 0] == 1234.5 and (count == 1 or chunks[0, 1, 0, 0] == 1234.5)


@pytest.mark.parametrize("L, w, size", [(3, 2, None), (5, 2, None), (7, 2, 6), (4, 2, 6)])
def test_chunk_rejects_lengths_that_do_not_chunk(L, w, size):
    with pytest.raises(ValueError, match="x must hold a whole number of chunks"):
        chunk(torch.zeros(1, L, 1), w, size=size)


# Step 4a: the chunked product.


@given(chunkable(), st.integers(1, 3), st.sampled_from((1, 3, 16)), seeds)
def test_chunk_scores_are_the_products_inside_each_chunk(lw, BH, d, seed):
    L, w = lw
    q, k = randn(BH, L, d, seed=seed), randn(BH, L, d, seed=seed + 1)
    scores = chunk_scores(chunk(q, w), chunk(k, w))
    dense = q @ k.transpose(1, 2)  # BH x L x L
    assert scores.shape == (BH, L // w - 1, 2 * w, 2 * w)
    for c in range(L // w - 1):
        window = slice(c * w, c * w + 2 * w)
        assert_close64(scores[:, c], dense[:, window, window])


# Step 4b: the skew and its inverse.


@given(st.integers(1, 6), st.integers(1, 9), st.integers(-9, 9), st.integers(1, 9), layouts, seeds)
def test_skew_reads_diagonals_into_columns(R, N, first, count, layout, seed):
    m = laid_out(layout, 2, R, N, seed=seed)
    out = skew(m, first, count)
    expected = torch.zeros(2, R, count, dtype=m.dtype)
    for r in range(R):
        for t in range(count):
            if 0 <= r + first + t < N:
                expected[:, r, t] = m[:, r, r + first + t]
    assert torch.equal(out, expected)
    if first >= 0 and R - 1 + first + count - 1 < N:  # every read inside m: a view, not a copy
        assert shares_storage(out, m)


@given(st.integers(1, 6), st.integers(1, 9), seeds)
def test_unskew_lays_columns_on_diagonals_and_undoes_skew(R, n, seed):
    band = randn(3, R, n, seed=seed)
    out = unskew(band)
    expected = torch.zeros(3, R, R + n - 1, dtype=band.dtype)
    for r in range(R):
        expected[:, r, r : r + n] = band[:, r]
    assert torch.equal(out, expected)
    assert torch.equal(skew(out, 0, n), band)


# Step 4c: the band and its invalid ends.


@given(chunkable(), st.integers(1, 3), st.sampled_from((1, 2, 16)), seeds)
def test_band_scores_are_the_dense_scores_inside_the_band(lw, BH, d, seed):
    L, w = lw
    q, k = randn(BH, L, d, seed=seed), randn(BH, L, d, seed=seed + 1)
    band = band_scores(chunk_scores(chunk(q, w), chunk(k, w)))
    assert band.shape == (BH, L, 2 * w + 1)
    assert_close64(band, dense_to_band(q @ k.transpose(1, 2), w))
    valid = band_mask(L, w)[0]  # L x (2w + 1)
    assert (band[:, ~valid] == 0).all()  # the first w rows before token 0, the last w past the end
    assert_close64(band_to_dense(band), (q @ k.transpose(1, 2)) * dense_band_mask(L, w))


@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 10), st.integers(1, 3), st.booleans(), seeds)
def test_band_mask_marks_real_keys(L, w, extra_rows, B, with_padding, seed):
    pad = randn(B, L, seed=seed) > 0.3 if with_padding else None
    mask = band_mask(L, w, padded_len=L + extra_rows, key_padding_mask=pad)
    assert mask.dtype == torch.bool and mask.shape == (B if with_padding else 1, L + extra_rows, 2 * w + 1)
    for i in range(L + extra_rows):
        for j in range(2 * w + 1):
            key = i + j - w
            real = 0 <= key < L
            expected = torch.tensor(real).expand(mask.shape[0])
            if real and with_padding:
                expected = ~pad[:, key]
            assert torch.equal(mask[:, i, j], expected)


@given(st.integers(1, 40), st.integers(1, 45))
def test_band_mask_is_the_dense_band(L, w):
    assert torch.equal(band_to_dense(band_mask(L, w)[0]), dense_band_mask(L, w))
    i, j = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
    assert torch.equal(dense_band_mask(L, w), (i - j).abs() <= w)


# Step 5a: the softmax over the band.


@given(
    st.integers(1, 30),
    st.integers(1, 6),
    st.sampled_from((torch.float64, torch.float32, torch.float16, torch.bfloat16)),
    st.floats(0.0, 1.0),
    seeds,
)
def test_band_softmax_is_the_softmax_over_the_valid_cells(L, w, dtype, masked_fraction, seed):
    scores = (3 * randn(2, L, 2 * w + 1, seed=seed)).to(dtype)
    mask = randn(2, L, 2 * w + 1, seed=seed + 1).abs() > masked_fraction * 3  # some rows fully masked
    mask[0, 0] = False
    probs = band_softmax(scores, mask)
    assert probs.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(probs).all()
    assert (probs[~mask] == 0).all()
    exp = scores.double().exp() * mask  # softmax by its definition, in float64
    total = exp.sum(-1, keepdim=True)
    expected = torch.where(total > 0, exp / total, 0.0)
    tol = 1e-12 if dtype == torch.float64 else 1e-6  # computed in float32 otherwise
    torch.testing.assert_close(probs.double(), expected, rtol=0, atol=tol)
    assert (probs[0, 0] == 0).all()


# Step 5b: P x V through the value chunks.


@given(chunkable(), st.integers(1, 3), st.integers(1, 4), seeds)
def test_value_chunks_hold_tokens_minus_w_to_plus_2w(lw, BH, d, seed):
    L, w = lw
    v = randn(BH, L, d, seed=seed)
    chunks = value_chunks(v, w)
    assert chunks.shape == (BH, L // w, 3 * w, d)
    for b in range(L // w):
        for y in range(3 * w):
            token = (b - 1) * w + y
            expected = v[:, token] if 0 <= token < L else torch.zeros(BH, d, dtype=v.dtype)
            assert torch.equal(chunks[:, b, y], expected)


@given(chunkable(), st.integers(1, 3), st.integers(1, 5), seeds)
def test_band_times_values_is_dense_P_times_V(lw, BH, d, seed):
    L, w = lw
    probs = randn(BH, L, 2 * w + 1, seed=seed)  # any numbers; the cells off the ends must not count
    v = randn(BH, L, d, seed=seed + 1)
    out = band_times_values(probs, v)
    assert out.shape == (BH, L, d)
    assert_close64(out, band_to_dense(probs) @ v)


# Conversions between the band and the dense layout.


@given(st.integers(1, 30), st.integers(1, 35), seeds)
def test_band_dense_round_trips(L, w, seed):
    dense = randn(2, L, L, seed=seed)
    band = dense_to_band(dense, w)
    assert band.shape == (2, L, 2 * w + 1)
    for i in range(L):
        for j in range(2 * w + 1):
            key = i + j - w
            expected = dense[:, i, key] if 0 <= key < L else torch.zeros(2, dtype=dense.dtype)
            assert torch.equal(band[:, i, j], expected)
    inside = dense_band_mask(L, w)
    assert torch.equal(band_to_dense(band), dense * inside)
    assert torch.equal(band_to_dense(band, fill=-7.0), torch.where(inside, dense, -7.0))
    assert torch.equal(dense_to_band(band_to_dense(band), w), band)
