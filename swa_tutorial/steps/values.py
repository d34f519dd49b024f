"""Step 5b: P x V, through the second skew and the 3w value chunks.

Query i averages the values of keys i - w .. i + w with the band probabilities of its row. Cut
the queries into blocks of w: block g's keys all lie in the 3w tokens (g - 1) w .. (g + 2) w - 1.
So V, padded with w zero rows at each end, is viewed as overlapping chunks of 3w (stepping w),
and each block's band rows are skewed back (:func:`unskew`) into a w x 3w
matrix whose column is the key's place in that chunk. One batched product finishes the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.core.validation import (
    check_band_width,
    check_chunk_window,
    check_shape,
)
from swa_tutorial.steps.chunks import chunk
from swa_tutorial.steps.skewing import unskew


def value_chunks(v: torch.Tensor, window: int) -> torch.Tensor:
    """The 3w value chunks: [B*H, L, d] -> [B*H, L // w, 3w, d], a view of V padded by w at both ends.

    Chunk g holds the values of tokens (g - 1) w .. (g + 2) w - 1 (zeros outside the sequence).
    """
    window = check_chunk_window(window)
    check_shape(v, "v", "[B*H, L, d]")
    padded = F.pad(v, (0, 0, window, window))  # BH x (L + 2w) x d
    return chunk(padded, window, size=3 * window)  # BH x L/w x 3w x d


def band_times_values(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """P x V from band probabilities: probs [B*H, L, 2w + 1], v [B*H, L, d] -> [B*H, L, d].

    ``out[r, i] = sum_t probs[r, i, t] * v[r, i + t - w]``; L must be a multiple of w.
    """
    check_shape(probs, "probs", "[B*H, L, 2w + 1]")
    check_shape(v, "v", "[B*H, L, d]")
    w = check_band_width(probs, "probs")
    if v.dtype != probs.dtype:
        raise TypeError(f"v must have the dtype of probs ({probs.dtype}), got {v.dtype}")
    L = probs.shape[1]
    if L % w or L < w or v.shape[:2] != probs.shape[:2]:
        raise ValueError(
            f"probs [B*H, L, 2w + 1] and v [B*H, L, d] must share B*H and L, with L a multiple of w = {w}; "
            f"got probs {tuple(probs.shape)} and v {tuple(v.shape)}"
        )
    blocks = unskew(probs.unflatten(1, (L // w, w)))  # BH x L/w x w x 3w
    out = torch.einsum("bnxy,bnyd->bnxd", blocks, value_chunks(v, w))  # BH x L/w x w x d
    return out.flatten(1, 2)  # BH x L x d
