"""The seed example: 8 tokens, d_model = 2, w = 2, one head, batch 1.

With the labelled inputs (q_i = (i, 1), k_j = (10, j), tokens from 1) and scale 1, every score
q_i . k_j is the label 10 i + j, so the band the chunked algorithm builds must be the seed's S:
entry (i, j) labelled "ij" inside the band |i - j| <= 2 and empty outside. The expected labels are
built here from that definition.
"""

from __future__ import annotations

import torch

from cases import assert_close64
from swa_tutorial import (band_scores, band_to_dense, chunk, chunk_scores, dense_attention, dense_to_band, labelled_qkv,
                          merge_heads, num_chunks, sliding_window_attention)

L, W = 8, 2


def seed_S() -> torch.Tensor:
    """The seed's S as a dense 8 x 8 matrix: 10 i + j inside the band |i - j| <= w, 0 outside."""
    S = torch.zeros(L, L, dtype=torch.float64)
    for i in range(1, L + 1):
        for j in range(1, L + 1):
            if abs(i - j) <= W:
                S[i - 1, j - 1] = 10 * i + j
    return S


def labelled_band() -> torch.Tensor:
    q, k, _ = labelled_qkv(L)
    qc, kc = chunk(merge_heads(q), W), chunk(merge_heads(k), W)  # 1 x C x 2w x 2
    return band_scores(chunk_scores(qc, kc))[0]  # L x (2w + 1)


def test_labelled_inputs_follow_their_definition():
    q, k, v = labelled_qkv(L)
    tokens = torch.arange(1, L + 1, dtype=torch.float64)
    assert q.shape == k.shape == v.shape == (1, L, 1, 2)
    assert torch.equal(q[0, :, 0], torch.stack([tokens, torch.ones(L, dtype=torch.float64)], -1))
    assert torch.equal(k[0, :, 0], torch.stack([torch.full((L,), 10.0, dtype=torch.float64), tokens], -1))
    assert torch.equal(v, q)
    assert torch.equal(q[0, :, 0] @ k[0, :, 0].T, 10 * tokens[:, None] + tokens[None, :])


def test_seed_steps_number_of_chunks_and_chunk_shape():
    q, _, _ = labelled_qkv(L)
    assert num_chunks(L, W) == L // W - 1
    assert chunk(merge_heads(q), W).shape == (1, num_chunks(L, W), 2 * W, 2)  # B*H x C x 2w x d


def test_labelled_band_is_the_seeds_S():
    band = labelled_band()
    S = seed_S()
    assert torch.equal(band_to_dense(band), S)
    assert torch.equal(band, dense_to_band(S, W))
    # row i of the band holds the labels 10 i + (i - 2 .. i + 2), zero where the key is off the end
    for i in range(1, L + 1):
        expected = [10 * i + j if 1 <= j <= L else 0 for j in range(i - W, i + W + 1)]
        assert band[i - 1].tolist() == expected


def test_labelled_attention_matches_dense():
    q, k, v = labelled_qkv(L)
    assert_close64(sliding_window_attention(q, k, v, W, scale=1.0), dense_attention(q, k, v, W, scale=1.0))
