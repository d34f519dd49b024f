"""The chunks backend: Part I's algorithm, Longformer's overlapping chunks, for every window.

The symmetric window w runs exactly as the book derives it: pad L to a multiple of w, merge the
heads, score the 2w-token chunks, read the band out with the skew, mask, softmax, and multiply
by the 3w value chunks.

An asymmetric window (left, right) is a symmetric window about a shifted diagonal. Take
w = ceil((left + right) / 2) and shift = right - w (so -w <= shift <= w). Query i's keys
i - left .. i + right all lie within (i + shift) - w .. (i + shift) + w, a band of 2w + 1 keys
centred on key i + shift; when left + right is odd the band holds one key more than the window
(i + shift - w = i - left - 1), and that one diagonal is masked. So shift the keys and values by
``shift`` rows (row m holds token m + shift, zeros past either end) and run the symmetric
algorithm: a causal window (w, 0) costs a band of w + 1 or w + 2 columns, not 2w + 1. The
queries get max(shift, 0) zero rows in front so that every key they need has a row, and the
length grows by abs(shift) <= w before it is rounded up to a multiple of w.

torch.export with a dynamic L: the rounding up (a ceiling division of the symbolic L) leaves
guards the exporter cannot prove, so the entry point does not come here then: it takes the
diagonals (:mod:`.diagonals`), whose shapes are L plus constants, and one program holds for
every L from 1 up. torch.compile has no such limit (it recompiles when it must).

Scores, softmax and P x V are computed in float32 for half inputs (the accumulation dtype of
:mod:`swa_tutorial.core.softmax`): q and k are converted before the chunked product, so no score is
ever rounded to 16 bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.backends import dense
from swa_tutorial.core.heads import repeat_kv
from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.steps.band import band_mask, band_scores
from swa_tutorial.steps.chunks import chunk, chunk_scores, merge_heads, split_heads
from swa_tutorial.steps.shift import shifted_layout
from swa_tutorial.steps.values import band_times_values


def attend(q, k, v, window, key_padding_mask, scale, softcap=0.0, dropout=0.0):
    """q [B, L, H, d], k [B, L, H_kv, d], v [B, L, H_kv, d_v], window (left, right)
    -> out [B, L, H, d_v], lse [B, L, H].

    Grouped heads: k and v are repeated to H heads (the band of scores, B H L (2w + 1) numbers,
    dwarfs that copy). ``softcap`` c > 0 caps the band's scores at c tanh(s / c) before the mask;
    ``dropout`` p > 0 drops band probabilities with probability p, the kept ones times 1 / (1 - p).
    """
    left, right = window
    B, L, H, _ = q.shape
    w, shift, lead, Lp = shifted_layout(L, left, right)
    # A side that reaches the whole sequence, the sequence in one chunk (that chunk is dense
    # attention), or a padded band with more cells than the L x L matrix: dense attention.
    if max(left, right) >= L - 1 or 2 * w >= L or Lp * (2 * w + 1) >= L * L:
        return dense.attend(q, k, v, window, key_padding_mask, scale, softcap, dropout)
    acc = accumulation_dtype(q.dtype)
    k, v = repeat_kv(k, H), repeat_kv(v, H)

    def rows(x, first):  # [B, L, H, d] -> [B*H, Lp, d]: row r holds token r - first, or zeros
        return F.pad(merge_heads(x.to(acc)), (0, 0, first, Lp - L - first))

    scores = chunk_scores(chunk(rows(q, lead) * scale, w), chunk(rows(k, lead - shift), w))  # BH x C x 2w x 2w
    band = band_scores(scores)  # BH x Lp x (2w + 1)
    del scores
    if softcap:
        band = torch.tanh(band / softcap) * softcap
    mask = band_mask(L, w, padded_len=Lp, key_padding_mask=key_padding_mask, shift=shift - lead, device=q.device)
    offset = torch.arange(-w, w + 1, device=q.device) + shift  # key - query of each band column
    mask = mask & (offset >= -left) & (offset <= right)  # B' x Lp x (2w + 1); B' = B or 1
    probs, lse = masked_softmax(band.unflatten(0, (B, H)), mask[:, None])  # B x H x Lp x (2w + 1)
    del band  # free the scores' memory for P x V
    if dropout:
        probs = F.dropout(probs, dropout)
    out = band_times_values(probs.flatten(0, 1), rows(v, lead - shift))  # BH x Lp x d_v
    return split_heads(out, B)[:, lead : lead + L].contiguous(), lse[:, :, lead : lead + L].transpose(1, 2)
