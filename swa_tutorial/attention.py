"""The public entry point: sliding-window attention for real inputs, composed from the steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .band import band_mask, band_scores, band_softmax
from .chunks import chunk, chunk_scores, merge_heads, split_heads
from .validation import check_chunk_window as check_window, check_key_padding_mask, check_qkv, check_scale
from .values import band_times_values


def padded_length(seq_len: int, window: int) -> int:
    """The length the chunked algorithm runs at: L rounded up to a multiple of w, at least 2w.

    The chunk view needs no more than that (Longformer's own code pads to a multiple of 2w).
    """
    return max(2 * window, -(-seq_len // window) * window)


def sliding_window_attention(q, k, v, window, *, key_padding_mask=None, scale=None) -> torch.Tensor:
    """Longformer's sliding-window attention: each query attends to the keys within ``window``.

    Query i attends to keys i - w .. i + w (w = ``window``, the one-sided window; the band is
    2w + 1 wide), in O(L w) time and memory, through Longformer's overlapping chunks.

    Args:
        q: queries [B, L, H, d], float64, float32, float16 or bfloat16, any L >= 1.
        k: keys [B, L, H, d], the dtype and device of q.
        v: values [B, L, H, d_v], the dtype and device of q.
        window: the one-sided window w, an int >= 1. A window of L - 1 or more is ordinary dense
            attention (it is clipped to L - 1 inside).
        key_padding_mask: optional bool [B, L]; True marks a padding key that no query may attend
            to (as in ``torch.nn.MultiheadAttention``). A query whose whole window is padding gets
            a zero output.
        scale: the factor on q . k before the softmax; default 1 / sqrt(d).

    Returns:
        [B, L, H, d_v], the dtype and device of q. Differentiable in q, k and v. The softmax runs
        in float32 for float16/bfloat16 inputs.

    Inside: L is padded at the end to a multiple of w (at least 2w) and the padded keys masked;
    heads are merged into the batch, the chunk scores [B*H, C, 2w, 2w] computed and read into the
    band [B*H, L, 2w + 1], the invalid cells masked, the softmax taken, and P x V computed through
    the 3w value chunks.
    """
    check_qkv(q, k, v)
    window = check_window(window)
    B, L, H, d = q.shape
    check_key_padding_mask(key_padding_mask, B, L, q.device)
    scale = check_scale(scale, d)

    w = min(window, max(L - 1, 1))  # a wider window sees no more keys
    Lp = padded_length(L, w)

    def prepare(x):  # [B, L, H, d] -> [B*H, Lp, d], zero rows appended
        x = merge_heads(x)
        # (F.pad copies even when it adds nothing)
        return F.pad(x, (0, 0, 0, Lp - L)) if Lp > L else x

    scores = chunk_scores(chunk(prepare(q * scale), w),  # BH x C x 2w x 2w
                          chunk(prepare(k), w))
    band = band_scores(scores)  # BH x Lp x (2w+1)
    del scores
    mask = band_mask(L, w, padded_len=Lp,
                     key_padding_mask=key_padding_mask, device=q.device)
    # Without key padding every row sees a real key (itself, or for the
    # rows past L, token L - 1), so no row needs zeroing after the softmax.
    probs = band_softmax(band.unflatten(0, (B, H)), mask[:, None],
                         every_row_has_key=key_padding_mask is None)
    del band  # free the scores' memory for P x V
    probs = probs.to(v.dtype).flatten(0, 1)  # BH x Lp x (2w+1)
    out = band_times_values(probs, prepare(v))  # BH x Lp x d_v
    return split_heads(out, B)[:, :L]  # B x L x H x d_v
