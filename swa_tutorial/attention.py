"""The public entry point: sliding-window attention for real inputs, on any backend.

:func:`sliding_window_attention` validates once, then handles what no backend needs to know:
packed sequences (a right-aligned padded batch, :mod:`swa_tutorial.core.packing`), empty sizes,
dilation (d ordinary windows over the residue classes of the tokens, one group of heads per
dilation), fewer or more queries than keys (a rectangle: cropped, then sent to the dense backend
or made square), attention sinks (from each backend's out and lse), the output's dtype and
layout. The backends (:mod:`swa_tutorial.backends`) each compute one ordinary (left, right)
window over one sequence, with grouped heads and a softcap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from swa_tutorial.backends import check_backend, dense, load
from swa_tutorial.backends.diagonals import attend_every_length, exports_every_length
from swa_tutorial.core.heads import kv_heads_for
from swa_tutorial.core.packing import check_packing
from swa_tutorial.core.precision import accumulation_dtype, cast_output, without_autocast
from swa_tutorial.core.softmax import add_sinks
from swa_tutorial.core.validation import (
    check_dropout,
    check_grouped_qkv,
    check_key_padding_mask,
    check_scale,
    check_sinks,
    check_softcap,
)
from swa_tutorial.core.windows import (
    check_dilation,
    check_window,
    clip_dilation,
    clip_window,
)


def sliding_window_attention(
    q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, backend="auto", return_lse=False,
    softcap=0.0, sinks=None, dropout=0.0, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
):
    """Sliding-window attention: each query attends to the keys of its window, in O(L w).

    Args:
        q: queries [B, L_q, H, d] (batch, sequence, heads, head dim), float64, float32, float16
            or bfloat16, on any device, any strides.
        k: keys [B, L_k, H_kv, d], the dtype and device of q. Grouped heads: H a multiple of
            H_kv, query head h reads key/value head h // (H / H_kv) (H_kv = 1: multi-query).
        v: values [B, L_k, H_kv, d_v], the dtype and device of q (d_v may differ from d).
        window: which keys query i attends, both ends inclusive:

            * an int w >= 1: keys i - w .. i + w (Longformer's symmetric window, 2w + 1 keys);
            * a pair (left, right) of ints >= 0: keys i - left .. i + right (FlashAttention's
              ``window_size``). (w, 0) is a causal window of w + 1 keys, (0, 0) the token alone;
              None for a side means no limit ((None, 0) is causal attention).

            With L_q != L_k the queries are aligned to the end of the keys (FlashAttention's
            rule, as in decoding and chunked prefill): query i sits at key position
            p = i + L_k - L_q and attends keys p - left .. p + right that exist.
            :mod:`swa_tutorial.integrations.conventions` converts other libraries' settings.
        key_padding_mask: optional bool [B, L_k]; True marks a padding key that no query attends
            (as in ``torch.nn.MultiheadAttention``).
        scale: the factor on q . k before the softmax, a finite real; default 1 / sqrt(d).
        dilation: an int d >= 1, or one int per query head: query i attends key j when j - p is
            a multiple of d and -left d <= j - p <= right d (the Longformer paper's dilated window).
        backend: "auto" (the default), "chunks" (the book's algorithm), "dense", "tiles",
            "diagonals" or "triton" (:mod:`swa_tutorial.backends`). Every backend computes the
            same attention. Under ``torch.export`` with a dynamic L every call runs
            "diagonals" (or "dense" for an unbounded side), so that one program holds for every
            L from 1 up (:func:`swa_tutorial.backends.diagonals.attend_every_length`).
        return_lse: also return each query's log-sum-exp of its scores, float32 (float64 for
            float64 inputs) [B, L_q, H] (sinks included).
        softcap: a float c >= 0: the scaled scores s become c tanh(s / c) before the window's
            mask (Gemma 2's logit cap); 0 (the default) caps nothing.
        sinks: optional floating tensor [H], one logit per query head added to every row's
            softmax denominator and to no numerator (GPT-OSS's attention sinks); differentiable.
        dropout: a probability p in [0, 1): attention probabilities are dropped with
            probability p and the kept ones scaled by 1 / (1 - p), whenever p > 0 (pass
            ``p if self.training else 0``, as with FlashAttention), drawn from torch's default
            generator of q's device (reproducible under ``torch.manual_seed``). Only the "dense"
            and "chunks" backends drop: "auto" then runs "chunks", and so does a call naming
            "tiles" or "triton" (with a warning). lse stays that of the undropped softmax.
        cu_seqlens_q, cu_seqlens_k: packed sequences (FlashAttention's varlen convention):
            int32 [n + 1] cumulative document lengths, from 0 to the number of tokens. Then q is
            [T_q, H, d], k [T_k, H_kv, d], v [T_k, H_kv, d_v], key_padding_mask is None, the
            output [T_q, H, d_v] and lse [T_q, H]; each document attends only within itself,
            its queries aligned to the end of its own keys.
        max_seqlen_q, max_seqlen_k: optional, with packed sequences: at least every document's
            length (checked; the longest document sets the padded batch).

    Returns:
        [B, L_q, H, d_v], contiguous, the dtype and device of q (and lse, with ``return_lse``).
        A query with no key to attend (its window all padding, or beyond the keys) gets a zero
        output (lse -inf, or the sink with sinks). Differentiable in q, k, v (and sinks).
        Empty sizes (B, L_q, L_k, H, d or d_v = 0) work as in ``scaled_dot_product_attention``:
        with d = 0 every score is 0, so each query averages its window's values.

    Precision: for float16 and bfloat16 inputs the scores are accumulated and kept in float32
    (the scale applied in float32), the softmax and the P x V sums run in float32, and only the
    output is rounded to the input dtype. Masked keys never get weight. A NaN or infinity in
    q or k makes NaN exactly the rows that score it inside their window (without a softcap,
    which maps an infinite score to a finite one); one in v reaches at least the rows whose
    window holds it (blocked algorithms multiply zero weights by nearby values too, and
    0 x NaN is NaN). Non-finite inputs are never hidden.
    """
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    out, lse = attend(
        q, k, v, window, key_padding_mask=key_padding_mask, scale=scale, dilation=dilation, backend=backend,
        softcap=softcap, sinks=sinks, dropout=dropout, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
    )
    out = cast_output(out, q.dtype)
    return (out, lse) if return_lse else out


@dataclass(frozen=True)
class _Call:
    """What every piece of one call shares: the backend's attend and the scores' settings."""

    backend: object  # attend(q, k, v, window, key_padding_mask, scale, softcap, dropout=0.0)
    window: tuple  # (left, right), None for no limit
    scale: float
    softcap: float
    dropout: float

    def run(self, q, k, v, window, key_padding_mask):
        """The backend on a square problem; dropout goes as an eighth argument only when > 0 (only
        the dense and chunks backends take one)."""
        settings = (self.scale, self.softcap) + ((self.dropout,) if self.dropout else ())
        return self.backend(q, k, v, window, key_padding_mask, *settings)


def attend(
    q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, backend="auto",
    softcap=0.0, sinks=None, dropout=0.0, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
):
    """:func:`~swa_tutorial.sliding_window_attention` before the final rounding: (out, lse),
    both in the accumulation dtype (float32 for half inputs, float64 for float64), out
    [B, L_q, H, d_v] and lse [B, L_q, H] (packed: [T_q, H, d_v], [T_q, H]). For code that
    combines several attentions (global tokens, shards) and rounds once at the end."""
    packed = cu_seqlens_q is not None or cu_seqlens_k is not None
    check_grouped_qkv(q, k, v, packed=packed)
    packing = check_packing(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    window = check_window(window)
    H, d = q.shape[-2:]
    if not packed:
        check_key_padding_mask(key_padding_mask, q.shape[0], k.shape[1], q.device)
    acc = accumulation_dtype(q.dtype)
    call = _Call(load(check_backend(backend)), window, check_scale(scale, d, acc), check_softcap(softcap),
                 check_dropout(dropout))
    check_sinks(sinks, H, q.device)
    dilations = check_dilation(dilation, H)
    with without_autocast(q.device):
        if packing is None:
            return _attend(call, q, k, v, key_padding_mask, dilations, sinks)
        out, lse = _attend(call, packing.pad_queries(q), packing.pad_keys(k), packing.pad_keys(v),
                           packing.key_padding_mask(q.device), dilations, sinks)
        return packing.unpad_queries(out), packing.unpad_queries(lse)


def _attend(call, q, k, v, key_padding_mask, dilations, sinks):
    """:func:`attend` on a checked batch: empty sizes, then one backend call per dilation, sinks."""
    B, L_q, H, d = q.shape
    acc = accumulation_dtype(q.dtype)
    if B * L_q * H == 0 or k.shape[1] == 0:  # no query, or no key for any query: zeros and -inf
        connected = (q.sum() + k.sum() + v.sum()).to(acc) * 0  # a 0 that depends on q, k and v (zero gradients)
        out = q.new_zeros(B, L_q, H, v.shape[-1], dtype=acc) + connected
        lse = q.new_full((B, L_q, H), float("-inf"), dtype=acc) + connected
    else:
        if d == 0:  # every score is 0: a zero column changes no score and keeps the backends' shapes
            q, k = F.pad(q, (0, 1)), F.pad(k, (0, 1))
        if v.shape[-1] == 0:  # likewise a zero value column, dropped after
            out, lse = _by_dilation(call, q, k, F.pad(v, (0, 1)), key_padding_mask, dilations)
            out = out[..., :0]
        else:
            out, lse = _by_dilation(call, q, k, v, key_padding_mask, dilations)
    if sinks is not None:
        out, lse = add_sinks(out, lse, sinks)
    return out, lse


def _by_dilation(call, q, k, v, key_padding_mask, dilations):
    """One call per distinct dilation, on the query heads that have it (and the key/value heads
    they read), heads back in order."""
    groups = sorted(set(dilations))
    if len(groups) == 1:
        return _rectangle(call, q, k, v, key_padding_mask, groups[0])
    H, H_kv = q.shape[2], k.shape[2]
    heads = [[h for h, d in enumerate(dilations) if d == g] for g in groups]
    parts = []
    for g, hs in zip(groups, heads):
        kv = kv_heads_for(hs, H, H_kv)
        parts.append(_rectangle(call, q[:, :, hs], k[:, :, kv], v[:, :, kv], key_padding_mask, g))
    order = torch.tensor([h for hs in heads for h in hs], device=q.device).argsort()  # inverse permutation
    out, lse = (torch.cat([part[n] for part in parts], dim=2)[:, :, order] for n in (0, 1))
    return out, lse


def _rectangle(call, q, k, v, key_padding_mask, d):
    """L_q queries aligned to the end of L_k keys, for one dilation d.

    The keys before the first one any query reaches, (L_k - L_q) - left d, are cropped. Then few
    queries (L_q <= left + right + 1: decoding, short chunks) are a dense rectangle of
    L_q x L_k' scores, no more than a band over the keys; more are made square, the queries
    padded in front with L_k' - L_q rows (dropped after), or the keys with L_q - L_k' padding
    keys, so that the end alignment is the ordinary diagonal.
    """
    L_q, L_k = q.shape[1], k.shape[1]
    if L_q == L_k:
        return _dilated(call, q, k, v, key_padding_mask, d)
    left = call.window[0]
    first = 0 if left is None else max(0, L_k - L_q - left * d)  # the first key any query reaches
    k, v = k[:, first:], v[:, first:]
    key_padding_mask = None if key_padding_mask is None else key_padding_mask[:, first:]
    L_k -= first
    longest = max(L_q, L_k)
    window = clip_window(call.window, longest - 1)
    if L_q <= window[0] + window[1] + 1:
        settings = (call.scale, call.softcap, call.dropout)
        return dense.attend(q, k, v, window, key_padding_mask, *settings, dilation=clip_dilation(d, longest))
    if L_k > L_q:
        out, lse = _dilated(call, F.pad(q, (0, 0, 0, 0, L_k - L_q, 0)), k, v, key_padding_mask, d)
        return out[:, L_k - L_q :], lse[:, L_k - L_q :]
    extra = L_q - L_k
    real = torch.ones(k.shape[:2], dtype=torch.bool, device=k.device) if key_padding_mask is None else ~key_padding_mask
    padding = ~F.pad(real, (extra, 0), value=False)  # B x L_q: the new keys in front are padding
    k, v = (F.pad(x, (0, 0, 0, 0, extra, 0)) for x in (k, v))
    return _dilated(call, q, k, v, padding, d)


def _dilated(call, q, k, v, key_padding_mask, d):
    """One dilation d for all of q's heads on a square problem: d ordinary windows over the
    residue classes.

    Tokens i = mu d + kappa (kappa = 0 .. d - 1) form class kappa, in which token i sits at place
    mu. Query i attends key j only when j - i is a multiple of d, that is when both are in the
    same class, and then -left d <= j - i <= right d means -left <= mu_j - mu_i <= right: an
    ordinary window inside the class. So the sequence is padded to a multiple of d (padding keys
    masked), folded into d sequences of L / d tokens as extra batch rows, attended, and unfolded.
    """
    B, L = q.shape[:2]
    if exports_every_length(L):  # one traced program for every L (swa_tutorial.backends.diagonals)
        return attend_every_length(q, k, v, call.window, key_padding_mask, call.scale, call.softcap, call.dropout, d)
    if d == 1:
        return call.run(q, k, v, clip_window(call.window, L - 1), key_padding_mask)
    d = clip_dilation(d, L)  # d > L would add d - L classes of padding only
    places = -(-L // d)  # tokens per class, padding included
    extra = places * d - L

    def classes(x):  # [B, L, ...] -> [B*d, L/d, ...]: row b*d + kappa is class kappa of b
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))
        return x.unflatten(1, (places, d)).transpose(1, 2).flatten(0, 1)

    padding = None
    if key_padding_mask is not None or extra:
        real = torch.ones(B, L, dtype=torch.bool, device=q.device) if key_padding_mask is None else ~key_padding_mask
        padding = ~classes(real)  # B*d x L/d: the appended places are padding
    out, lse = call.run(classes(q), classes(k), classes(v), clip_window(call.window, places - 1), padding)

    def unfold(x):  # [B*d, L/d, ...] -> [B, L, ...]
        return x.unflatten(0, (B, d)).transpose(1, 2).flatten(1, 2)[:, :L]

    return unfold(out), unfold(lse)
