"""Step 4c and 5a: the band layout, its invalid ends, and the softmax over it.

The band layout stores, for every query i, the 2w + 1 scores against keys i - w .. i + w:
``band[..., i, j] = q_i . k_{i + j - w}``. Column w is the diagonal (i against itself). The
first w rows reach before token 0 and the last w rows past token L - 1: those cells hold no
real key and are masked before the softmax, like padded keys.
"""

from __future__ import annotations

import torch

from .skew import skew
from .validation import check_chunk_window


def band_scores(chunk_scores: torch.Tensor) -> torch.Tensor:
    """Assemble the band from the chunked product: [B*H, C, 2w, 2w] -> [B*H, (C + 1) w, 2w + 1].

    Cut the L tokens into C + 1 blocks of w. Block b's queries are the top half of chunk b and
    the bottom half of chunk b - 1. Chunk b gives them their upper diagonals 1 .. w (their keys
    reach into block b + 1); chunk b - 1 gives them their lower diagonals -w .. 0 (keys back into
    block b - 1). Read with :func:`skew`, both halves are views: no padding is needed because
    those diagonals lie wholly inside their chunk. Only the first block (lower diagonals, from
    chunk 0) and the last block (upper diagonals, from chunk C - 1) reach outside the chunk;
    there the skew reads zeros, which are exactly the cells before token 0 and past token L - 1.
    """
    BH, C, two_w, _ = chunk_scores.shape
    w = two_w // 2
    top, bottom = chunk_scores[:, :, :w], chunk_scores[:, :, w:]  # BH x C x w x 2w each
    band = chunk_scores.new_empty(BH, C + 1, w, 2 * w + 1)  # BH x blocks x w x (2w + 1)
    band[:, :C, :, w + 1 :] = skew(top, 1, w)  # block b, diagonals 1..w, from chunk b
    band[:, 1:, :, : w + 1] = skew(bottom, 0, w + 1)  # block b, diagonals -w..0, from chunk b - 1
    band[:, 0, :, : w + 1] = skew(top[:, 0], -w, w + 1)  # first block: keys before token 0 -> 0
    band[:, C, :, w + 1 :] = skew(bottom[:, C - 1], w + 1, w)  # last block: keys past the end -> 0
    return band.flatten(1, 2)  # BH x L x (2w + 1)


def band_mask(
    seq_len: int,
    window: int,
    *,
    padded_len: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    device=None,
) -> torch.Tensor:
    """Which band cells hold a real key: bool [B, L', 2w + 1] (B = 1 without a padding mask).

    ``mask[b, i, j]`` is True when key i + j - w lies in 0 .. seq_len - 1 and is not padding
    (``key_padding_mask`` [B, seq_len], True = padding). ``padded_len`` (default seq_len) is the
    number of rows L' when the sequence was padded at the end: the rows past seq_len are queries
    that will be dropped, and no row may attend to the keys past seq_len.
    """
    w = check_chunk_window(window)
    padded_len = seq_len if padded_len is None else padded_len
    if key_padding_mask is not None:
        device = key_padding_mask.device
    batch = 1 if key_padding_mask is None else key_padding_mask.shape[0]
    # key_ok[b, w + t] says whether token t is a real key; w False cells pad either end.
    key_ok = torch.zeros(batch, padded_len + 2 * w, dtype=torch.bool, device=device)
    key_ok[:, w : w + seq_len] = True if key_padding_mask is None else ~key_padding_mask
    return key_ok.unfold(1, 2 * w + 1, 1)  # B x L' x (2w + 1): row i sees key_ok[i .. i + 2w]


def band_softmax(scores: torch.Tensor, mask: torch.Tensor, *, every_row_has_key: bool = False) -> torch.Tensor:
    """Softmax over each band row, over the cells where ``mask`` is True only.

    scores: [..., L, 2w + 1]; mask: bool, broadcastable to scores. Half types are computed in
    float32 (float64 stays float64) and the result has that dtype. Masked cells get probability
    exactly 0, and a row with no valid cell gets all zeros (never NaN). ``every_row_has_key=True``
    promises that no row is all masked (true without a key padding mask) and skips the pass that
    zeroes such rows.
    """
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))
    x = x.masked_fill(~mask, torch.finfo(x.dtype).min)  # finite: a fully masked row stays NaN-free
    probs = x.softmax(dim=-1)  # a masked cell: exp(min - row max) underflows to exactly 0 ...
    if every_row_has_key:
        return probs
    return probs.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # ... unless no cell is valid


def dense_to_band(dense: torch.Tensor, window: int) -> torch.Tensor:
    """Dense layout to band layout: [..., L, L] -> [..., L, 2w + 1].

    ``band[..., i, j] = dense[..., i, i + j - w]``; cells outside the matrix are 0.
    """
    window = check_chunk_window(window)
    L = dense.shape[-1]
    pos = torch.arange(L, device=dense.device)
    key = pos[:, None] + torch.arange(-window, window + 1, device=dense.device)  # L x (2w + 1)
    inside = (key >= 0) & (key < L)
    picked = dense.gather(-1, key.clamp(0, L - 1).expand(*dense.shape[:-1], -1))
    return picked.masked_fill(~inside, 0)


def band_to_dense(band: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Band layout to dense layout: [..., L, 2w + 1] -> [..., L, L].

    ``dense[..., i, k] = band[..., i, k - i + w]`` inside the band ``|i - k| <= w``, ``fill`` outside.
    """
    L, width = band.shape[-2:]
    w = (width - 1) // 2
    pos = torch.arange(L, device=band.device)
    col = pos[None, :] - pos[:, None] + w  # L x L: which band column holds dense cell (i, k)
    inside = (col >= 0) & (col <= 2 * w)
    picked = band.gather(-1, col.clamp(0, 2 * w).expand(*band.shape[:-1], L))
    return picked.masked_fill(~inside, fill)
