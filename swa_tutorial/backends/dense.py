"""The dense backend: the whole L x L score matrix, masked to the window.

O(L^2) time and memory. The chunks backend falls back to it when the whole sequence fits in one
chunk (2w >= L), where a single chunk would be at least as large as the dense matrix; it is also
the simplest implementation of the backend contract (see :mod:`swa_tutorial.backends`).
"""

from __future__ import annotations

import torch

from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.core.windows import offsets_mask


def attend(q, k, v, window, key_padding_mask, scale):
    """q, k [B, L, H, d], v [B, L, H, d_v], window (left, right) -> out [B, L, H, d_v], lse [B, L, H]."""
    acc = accumulation_dtype(q.dtype)
    L = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q.to(acc) * scale, k.to(acc))  # B x H x L x L
    allowed = offsets_mask(L, window, device=q.device)[None, None]  # 1 x 1 x L x L
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]  # B x 1 x L x L
    probs, lse = masked_softmax(scores, allowed)  # B x H x L x L, B x H x L
    out = torch.einsum("bhij,bjhd->bihd", probs, v.to(acc))  # B x L x H x d_v
    return out.contiguous(), lse.transpose(1, 2)
