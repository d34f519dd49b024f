"""The dense backend: the whole L x L score matrix, masked to the window.

O(L^2) time and memory. The chunks backend falls back to it when the whole sequence fits in one
chunk (2w >= L), where a single chunk would be at least as large as the dense matrix; it is also
the simplest implementation of the backend contract (see :mod:`swa_tutorial.backends`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.core.windows import offsets_mask


def attend(q, k, v, window, key_padding_mask, scale, softcap=0.0, dropout=0.0, *, dilation=1):
    """q [B, L_q, H, d], k [B, L_k, H_kv, d], v [B, L_k, H_kv, d_v], window (left, right)
    -> out [B, L_q, H, d_v], lse [B, L_q, H].

    The one backend that also takes L_q != L_k: the queries are aligned to the end of the keys
    (query i sits at key position i + L_k - L_q) and the window and the ``dilation`` d are
    measured from there (:func:`~swa_tutorial.core.windows.offsets_mask`). Grouped heads are one
    product per key/value head, never repeated. ``softcap`` c > 0 caps the scaled scores at
    c tanh(s / c) before the mask; ``dropout`` p > 0 drops each probability with probability p
    and scales the kept ones by 1 / (1 - p) (lse stays that of the undropped softmax).
    """
    acc = accumulation_dtype(q.dtype)
    L_q, H = q.shape[1:3]
    L_k, H_kv = k.shape[1:3]
    grouped = (q.to(acc) * scale).unflatten(2, (H_kv, H // H_kv))  # B x L_q x H_kv x g x d
    scores = torch.einsum("bigrd,bjgd->bgrij", grouped, k.to(acc)).flatten(1, 2)  # B x H x L_q x L_k
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    key_len = None if L_k == L_q else L_k
    allowed = offsets_mask(L_q, window, dilation, q.device, key_len=key_len)[None, None]  # 1 x 1 x L_q x L_k
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]  # B x 1 x L_q x L_k
    probs, lse = masked_softmax(scores, allowed)  # B x H x L_q x L_k, B x H x L_q
    if dropout:
        probs = F.dropout(probs, dropout)
    out = torch.einsum("bgrij,bjgd->bigrd", probs.unflatten(1, (H_kv, H // H_kv)), v.to(acc))  # B x L_q x H_kv x g x d_v
    return out.flatten(2, 3).contiguous(), lse.transpose(1, 2)
