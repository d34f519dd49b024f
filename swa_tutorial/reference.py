"""The specification: two slow but obviously correct forms of sliding-window attention.

Every fast path in the package is tested against these (in float64, on the CPU).

* :func:`dense_attention` builds the whole L x L score matrix S = Q K^T and masks every cell
  outside the window (:func:`dense_band_mask`, built from index arithmetic): O(L^2).
* :func:`loop_attention` is the per-query loop the source document warns about: query i looks
  at the keys of its window and nothing else. O(L w) work, but L small products in a Python loop.

Both take the arguments of :func:`swa_tutorial.sliding_window_attention` (every window form of
:mod:`swa_tutorial.windows`, dilation one per head or for all) and agree with it on everything it
promises: padded keys never get weight, and a query with no key to attend gets a zero output
(not NaN). They compute in the dtype of q.

Non-finite inputs are never hidden. A NaN or infinity in q or k makes NaN exactly the rows that
score it inside their window. One in v reaches every row whose window holds it; dense attention
(and every blocked algorithm: the chunks, the tiles, FlashAttention) also multiplies zero
weights by values outside a row's window, and 0 x NaN is NaN, so there it may reach more rows.
"""

from __future__ import annotations

import torch

from .validation import check_key_padding_mask, check_qkv, check_scale
from .windows import check_dilation, check_window, clip_dilation, clip_window, window_mask


def dense_band_mask(seq_len: int, window, device=None, *, dilation: int = 1) -> torch.Tensor:
    """The window as a dense boolean matrix: bool [L, L], True where query i may attend key j.

    For an int w it is the band ``|i - j| <= w``; in general (j - i) % d == 0 and
    -left * d <= j - i <= right * d (:func:`swa_tutorial.windows.window_mask`).
    """
    return window_mask(seq_len, window, device, dilation=dilation)


def _checked(q, k, v, window, key_padding_mask, scale, dilation):
    """Validate the arguments; return ((left, right), scale, one dilation per head)."""
    check_qkv(q, k, v)
    window = check_window(window)
    B, L, H, d = q.shape
    check_key_padding_mask(key_padding_mask, B, L, q.device)
    return window, check_scale(scale, d), check_dilation(dilation, H)


def allowed_keys(seq_len, window, dilations, key_padding_mask=None, device=None) -> torch.Tensor:
    """Which keys each query may attend: bool [B, H, L, L] (B = 1 without a padding mask).

    The window of each head (its own dilation) and, with ``key_padding_mask`` [B, L] (True =
    padding), no padding key.
    """
    per_head = torch.stack([window_mask(seq_len, window, device, dilation=d) for d in dilations])  # H x L x L
    allowed = per_head[None]  # 1 x H x L x L
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]  # B x H x L x L
    return allowed


def dense_attention(q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1) -> torch.Tensor:
    """Sliding-window attention through the full L x L score matrix.

    q, k: [B, L, H, d]; v: [B, L, H, d_v]; key_padding_mask: bool [B, L], True = padding.
    Returns [B, L, H, d_v] in the dtype of q (computed in that dtype).
    """
    window, scale, dilations = _checked(q, k, v, window, key_padding_mask, scale, dilation)
    B, L, H, _ = q.shape
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L x L
    allowed = allowed_keys(L, window, dilations, key_padding_mask, q.device)  # B x H x L x L
    sees_a_key = allowed.any(dim=-1, keepdim=True)  # B x H x L x 1
    # A query with no key would be a row of -inf, whose softmax is NaN: give it every key, then
    # zero its output. Its gradient is then 0 too, not NaN.
    probs = scores.masked_fill(~(allowed | ~sees_a_key), float("-inf")).softmax(dim=-1)
    probs = torch.where(sees_a_key, probs, 0.0)
    return torch.einsum("bhij,bjhd->bihd", probs, v)


def loop_attention(q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1) -> torch.Tensor:
    """Sliding-window attention one query at a time: the slow loop.

    For each query i and head h, the keys i - left d .. i + right d in steps of d (clipped to the
    sequence) are gathered, scored, softmaxed and used to average their values.
    q, k: [B, L, H, d]; v: [B, L, H, d_v]; key_padding_mask: bool [B, L], True = padding.
    Returns [B, L, H, d_v].
    """
    window, scale, dilations = _checked(q, k, v, window, key_padding_mask, scale, dilation)
    B, L, H, _ = q.shape
    out = v.new_zeros(B, L, H, v.shape[-1])
    for h, d in enumerate(dilations):
        d = clip_dilation(d, L)  # the same keys; no overflow for a huge d
        left, right = clip_window(window, L - 1)
        for i in range(L):
            keys = torch.arange(i - left * d, i + right * d + 1, d)
            keys = keys[(keys >= 0) & (keys < L)]  # the n keys of query i's window
            scores = torch.einsum("bd,bjd->bj", q[:, i, h], k[:, keys, h]) * scale  # B x n
            valid = torch.ones_like(scores, dtype=torch.bool)
            if key_padding_mask is not None:
                valid = ~key_padding_mask[:, keys]  # B x n
            sees_a_key = valid.any(dim=-1, keepdim=True)  # B x 1; if False the output stays 0
            probs = scores.masked_fill(~(valid | ~sees_a_key), float("-inf")).softmax(dim=-1)
            out[:, i, h] = torch.where(sees_a_key, torch.einsum("bj,bjd->bd", probs, v[:, keys, h]), 0.0)  # B x d_v
    return out
