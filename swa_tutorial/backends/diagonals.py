"""The diagonals backend: the band one diagonal at a time, for a program traced at every length.

Query i scores the keys i + o d for the offsets o = -left .. right (d the dilation): W = left +
right + 1 diagonals of the L x L score matrix. Pad the keys with left d zero rows in front and
right d behind; then diagonal o is one slice of them, rows (o + left) d .. (o + left) d + L - 1,
lined up with the queries, and its scores are a product and a sum over d, one per query:

    scores[..., o] = sum_d q * k_padded[(o + left) d : (o + left) d + L],     [B, L, H, W]

A key outside the sequence is one of the padding rows, and is masked like a padding key (the
padding mask is padded and sliced the same way). Then the masked softmax of every path, and
P x V the same way round: ``out = sum_o probs[..., o] * v_padded[(o + left) d : ... + L]``.

Every shape is L plus a constant: no rounding of L up to a multiple of the window, no chunk
count, no tiling. That is what ``torch.export`` needs to trace one program for a dynamic length
of any value from 1 up (:func:`attend_every_length`): the chunks' L rounded up to a multiple of w
and the tiles' loop over a tiling of L are functions of L the exporter cannot carry through
(it specializes, or fails on a guard). The price: W products over [B, L, H, d] each way, in
place of the chunks' few large matrix products, and W slices in the traced program; and a
window that must be bounded on both sides (an unbounded side traces the dense path).

Grouped heads (H a multiple of H_kv) broadcast each key/value head over its g = H / H_kv query
heads, never repeated; dilation is native (the offsets step by d), and so is a softcap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.backends import dense
from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.softmax import masked_softmax


def exports_every_length(seq_len) -> bool:
    """Whether ``seq_len`` is traced by ``torch.export`` as a dynamic length: then one program
    must hold for every L, and the entry point calls :func:`attend_every_length`, whatever
    backend was asked for. (A static export, torch.compile and eager mode keep their backend.)"""
    return isinstance(seq_len, torch.SymInt) and torch.compiler.is_exporting()


def attend_every_length(q, k, v, window, key_padding_mask, scale, softcap=0.0, dropout=0.0, dilation=1):
    """The export rule: attention whose traced program holds for every L from 1 up.

    q [B, L, H, d], k [B, L, H_kv, d], v [B, L, H_kv, d_v]; ``window`` (left, right) as the
    entry point checked it, not clipped to L (clipping would compare the traced L with the sides
    and fix the program to one side of that comparison); ``dilation`` one int. A window bounded on
    both sides runs here (:func:`attend`); one with an unbounded side (None), or with dropout,
    runs on the dense backend (an unbounded side is O(L^2) on any path), the side as L - 1.
    Returns out [B, L, H, d_v] and lse [B, L, H], in the accumulation dtype.
    """
    if None not in window and not dropout:
        return attend(q, k, v, window, key_padding_mask, scale, softcap, dilation=dilation)
    L = q.shape[1]
    window = tuple(L - 1 if side is None else side for side in window)
    return dense.attend(q, k, v, window, key_padding_mask, scale, softcap, dropout, dilation=dilation)


def attend(q, k, v, window, key_padding_mask, scale, softcap=0.0, *, dilation: int = 1):
    """q [B, L, H, d], k [B, L, H_kv, d], v [B, L, H_kv, d_v], window (left, right) ints >= 0
    (not clipped: a side past the sequence only adds masked diagonals) ->
    out [B, L, H, d_v] and lse [B, L, H], in the accumulation dtype.

    Query i attends key i + o ``dilation`` for o = -left .. right, inside the sequence and not
    padding (``key_padding_mask`` bool [B, L], True = padding, or None); ``scale`` on q . k,
    then ``softcap`` c > 0 caps each score at c tanh(s / c). Differentiable in q, k and v (plain
    tensor code: every derivative, forward mode and second order included).
    """
    left, right = window
    B, L, H, d = q.shape
    kv_heads = k.shape[2]
    acc = accumulation_dtype(q.dtype)
    before, after = left * dilation, right * dilation
    starts = [(o + left) * dilation for o in range(-left, right + 1)]  # diagonal o's first padded row

    def padded(x):  # [B, L, H_kv, e] -> [B, before + L + after, H_kv, 1, e]: zero rows around
        return F.pad(x.to(acc), (0, 0, 0, 0, before, after)).unsqueeze(3)

    queries = (q.to(acc) * scale).unflatten(2, (kv_heads, H // kv_heads))  # B x L x H_kv x g x d
    keys, values = padded(k), padded(v)
    scores = torch.stack([(queries * keys[:, s : s + L]).sum(-1) for s in starts], dim=-1)  # B x L x H_kv x g x W
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    real = torch.ones(1, L, dtype=torch.bool, device=q.device) if key_padding_mask is None else ~key_padding_mask
    real = F.pad(real, (before, after), value=False)  # B' x (before + L + after): False outside the sequence
    allowed = torch.stack([real[:, s : s + L] for s in starts], dim=-1)  # B' x L x W
    probs, lse = masked_softmax(scores, allowed[:, :, None, None])
    out = sum(probs[..., n, None] * values[:, s : s + L] for n, s in enumerate(starts))  # B x L x H_kv x g x d_v
    return out.flatten(2, 3).contiguous(), lse.flatten(2, 3)
