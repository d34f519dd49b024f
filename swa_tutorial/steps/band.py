"""Step 4c and 5a: the band layout, its invalid ends, and the softmax over it.

The band layout stores, for every query i, the 2w + 1 scores against keys i - w .. i + w:
``band[..., i, t] = q_i . k_{i + t - w}``. Column w is the diagonal (i against itself). The
first w rows reach before token 0 and the last w rows past token L - 1: those cells hold no
real key and are masked before the softmax, like padded keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.core.validation import (
    check_band_width,
    check_chunk_window,
    check_int,
    check_shape,
    is_real,
)
from swa_tutorial.core.windows import in_window, key_offsets
from swa_tutorial.steps.skewing import skew


def band_scores(chunk_scores: torch.Tensor) -> torch.Tensor:
    """Assemble the band from the chunked product: [B*H, C, 2w, 2w] -> [B*H, (C + 1) w, 2w + 1].

    Cut the L tokens into C + 1 blocks of w. Block g's queries are the top half of chunk g and
    the bottom half of chunk g - 1. Chunk g gives them their upper diagonals 1 .. w (their keys
    reach into block g + 1); chunk g - 1 gives them their lower diagonals -w .. 0 (keys back into
    block g - 1). Read with :func:`skew`, both halves are views: no padding is needed because
    those diagonals lie wholly inside their chunk. Only the first block (lower diagonals, from
    chunk 0) and the last block (upper diagonals, from chunk C - 1) reach outside the chunk;
    there the skew reads zeros, which are exactly the cells before token 0 and past token L - 1.
    """
    check_shape(chunk_scores, "chunk_scores", "[B*H, C, 2w, 2w]")
    BH, C, two_w, width = chunk_scores.shape
    if two_w != width or two_w % 2 or C < 1:
        raise ValueError(
            f"chunk_scores must be [B*H, C, 2w, 2w] with C >= 1 and an even 2w, got {tuple(chunk_scores.shape)}"
        )
    w = two_w // 2
    top, bottom = chunk_scores[:, :, :w], chunk_scores[:, :, w:]  # BH x C x w x 2w each
    band = chunk_scores.new_empty(BH, C + 1, w, 2 * w + 1)  # BH x blocks x w x (2w + 1)
    band[:, :-1, :, w + 1 :] = skew(top, 1, w)  # block g, diagonals 1..w, from chunk g
    band[:, 1:, :, : w + 1] = skew(bottom, 0, w + 1)  # block g, diagonals -w..0, from chunk g - 1
    band[:, 0, :, : w + 1] = skew(top[:, 0], -w, w + 1)  # first block: keys before token 0 -> 0
    band[:, -1, :, w + 1 :] = skew(bottom[:, -1], w + 1, w)  # last block (C): keys past the end -> 0
    return band.flatten(1, 2)  # BH x L x (2w + 1)


def band_mask(
    seq_len: int,
    window: int,
    *,
    padded_len: int | None = None,
    key_padding_mask: torch.Tensor | None = None,
    shift: int = 0,
    device=None,
) -> torch.Tensor:
    """Which band cells hold a real key: bool [B, L', 2w + 1] (B = 1 without a padding mask).

    ``mask[b, i, t]`` is True when key i + shift + t - w lies in 0 .. seq_len - 1 and is not
    padding (``key_padding_mask`` bool [B, seq_len], True = padding). ``padded_len`` (default
    seq_len) is the number of rows L' when the sequence was padded at the end: the rows past
    seq_len are queries that will be dropped, and no row may attend to the keys past seq_len.
    ``shift`` (from -w to w) centres row i's band on key i + shift instead of i: an asymmetric
    window is a symmetric one about a shifted diagonal (see :mod:`swa_tutorial.backends.chunked`).
    """
    seq_len = check_int(seq_len, "seq_len")
    w = check_chunk_window(window)
    padded_len = seq_len if padded_len is None else check_int(padded_len, "padded_len")
    if padded_len < seq_len:
        raise ValueError(f"padded_len must be at least seq_len = {seq_len}, got {padded_len}")
    shift = check_int(shift, "shift", minimum=-w)
    if shift > w:
        raise ValueError(f"shift must lie in -window .. window = -{w} .. {w}, got {shift}")
    if padded_len == 0:  # no rows
        batch = 1 if key_padding_mask is None else key_padding_mask.shape[0]
        return torch.zeros(batch, 0, 2 * w + 1, dtype=torch.bool, device=device)
    if key_padding_mask is None:
        real = torch.ones(1, seq_len, dtype=torch.bool, device=device)
    else:
        check_shape(key_padding_mask, "key_padding_mask", "[B, seq_len]", dtype=torch.bool)
        if key_padding_mask.shape[1] != seq_len:
            raise ValueError(
                f"key_padding_mask must be [B, seq_len] = [B, {seq_len}], got {list(key_padding_mask.shape)}"
            )
        real = ~key_padding_mask
    # key_ok[b, x] says whether key x + shift - w is real: False beyond either end.
    key_ok = F.pad(real, (w - shift, padded_len + w + shift - seq_len), value=False)  # B x (L' + 2w)
    return key_ok.unfold(1, 2 * w + 1, 1)  # B x L' x (2w + 1): row i sees key_ok[i .. i + 2w]


def band_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over each band row, over the cells where ``mask`` is True only.

    scores: [..., L, 2w + 1]; mask: bool, broadcastable to scores. Half types are computed in
    float32 (float64 stays float64) and the result has that dtype. Masked cells get probability
    exactly 0, and a row with no valid cell gets all zeros (never NaN); see
    :func:`swa_tutorial.core.softmax.masked_softmax`, which also returns each row's log-sum-exp.
    """
    check_shape(scores, "scores", "[..., L, 2w + 1]", exact_rank=False)
    check_shape(mask, "mask", "[..., L, 2w + 1]", dtype=torch.bool, exact_rank=False)
    try:
        fits = torch.broadcast_shapes(mask.shape, scores.shape) == scores.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"mask must broadcast to the scores' shape {tuple(scores.shape)}, got {tuple(mask.shape)}")
    return masked_softmax(scores, mask)[0]


def dense_to_band(dense: torch.Tensor, window: int) -> torch.Tensor:
    """Dense layout to band layout: [..., L, L] -> [..., L, 2w + 1].

    ``band[..., i, t] = dense[..., i, i + t - w]``; cells outside the matrix are 0.
    """
    window = check_chunk_window(window)
    check_shape(dense, "dense", "[..., L, L]", exact_rank=False, floating=False)
    if dense.shape[-1] != dense.shape[-2]:
        raise ValueError(f"dense must be square in its last two dims [..., L, L], got {tuple(dense.shape)}")
    L = dense.shape[-1]
    pos = torch.arange(L, device=dense.device)
    key = pos[:, None] + torch.arange(-window, window + 1, device=dense.device)  # L x (2w + 1)
    inside = (key >= 0) & (key < L)
    picked = dense.gather(-1, key.clamp(0, max(L - 1, 0)).expand(*dense.shape[:-1], -1))
    return picked.masked_fill(~inside, 0)


def band_to_dense(band: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Band layout to dense layout: [..., L, 2w + 1] -> [..., L, L].

    ``dense[..., i, k] = band[..., i, k - i + w]`` inside the band ``|i - k| <= w``, ``fill`` outside.
    """
    check_shape(band, "band", "[..., L, 2w + 1]", exact_rank=False, floating=False)
    if not is_real(fill):
        raise TypeError(f"fill must be a real number, got {type(fill).__name__}")
    w = check_band_width(band, "band")
    L = band.shape[-2]
    offset = key_offsets(L, band.device)  # L x L: k - i
    inside = in_window(offset, (w, w))
    col = (offset + w).clamp(0, 2 * w)  # which band column holds dense cell (i, k), when inside
    picked = band.gather(-1, col.expand(*band.shape[:-1], L))
    return picked.masked_fill(~inside, fill)
