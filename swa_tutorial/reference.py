"""The specification: two slow but obviously correct forms of sliding-window attention.

Every fast path in the package is tested against these (in float64, on the CPU).

* :func:`dense_attention` builds the whole L x L score matrix S = Q K^T and masks everything
  outside the band |i - j| <= w: O(L^2) time and memory.
* :func:`loop_attention` is the per-query loop the seed warns about: query i looks at keys
  i - w .. i + w and nothing else. O(L w) work, but L small products in a Python loop.

Both take the same arguments as :func:`swa_tutorial.sliding_window_attention` and agree with it on
everything it promises: padded keys are never attended, and a query whose whole window is padding
gets a zero output (not NaN).
"""

from __future__ import annotations

import torch

from .validation import check_key_padding_mask, check_qkv, check_scale, check_window


def dense_band_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """The band as a dense boolean matrix: ``mask[i, j] = |i - j| <= window``.

    Returns a bool tensor [L, L], True where query i may attend to key j (the convention of
    ``torch.nn.functional.scaled_dot_product_attention``).
    """
    window = check_window(window)
    pos = torch.arange(seq_len, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= window


def _checked(q, k, v, window, key_padding_mask, scale):
    check_qkv(q, k, v)
    window = check_window(window)
    B, L, H, d = q.shape
    check_key_padding_mask(key_padding_mask, B, L, q.device)
    return window, check_scale(scale, d)


def dense_attention(q, k, v, window, *, key_padding_mask=None, scale=None) -> torch.Tensor:
    """Sliding-window attention through the full L x L score matrix.

    q, k: [B, L, H, d]; v: [B, L, H, d_v]; key_padding_mask: bool [B, L], True = padding.
    Returns [B, L, H, d_v] in the dtype of q (computed in that dtype).
    """
    window, scale = _checked(q, k, v, window, key_padding_mask, scale)
    B, L, H, _ = q.shape
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L x L
    allowed = dense_band_mask(L, window, q.device).expand(B, 1, L, L)  # B x 1 x L x L
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    probs = torch.where(allowed.any(dim=-1, keepdim=True), probs, 0.0)  # all-padding rows -> 0
    return torch.einsum("bhij,bjhd->bihd", probs, v)


def loop_attention(q, k, v, window, *, key_padding_mask=None, scale=None) -> torch.Tensor:
    """Sliding-window attention one query at a time: the slow loop.

    For each query i the keys i - w .. i + w (clipped to the sequence) are gathered, scored,
    softmaxed and used to average the values. Batches and heads are handled together.
    q, k: [B, L, H, d]; v: [B, L, H, d_v]; key_padding_mask: bool [B, L], True = padding.
    Returns [B, L, H, d_v].
    """
    window, scale = _checked(q, k, v, window, key_padding_mask, scale)
    B, L, H, _ = q.shape
    out = v.new_zeros(B, L, H, v.shape[-1])
    for i in range(L):
        lo, hi = max(0, i - window), min(L, i + window + 1)
        # B x H x n scores of query i against its n = hi - lo keys
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, lo:hi]) * scale
        if key_padding_mask is not None:
            padding = key_padding_mask[:, None, lo:hi]  # B x 1 x n
            scores = scores.masked_fill(padding, float("-inf"))
        # a window of only padding gives NaN: make it zeros
        probs = scores.softmax(dim=-1).nan_to_num(0.0)
        out[:, i] = torch.einsum("bhj,bjhd->bhd", probs, v[:, lo:hi])
    return out
