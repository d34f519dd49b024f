"""The public entry point: sliding-window attention for real inputs, on any backend.

:func:`sliding_window_attention` validates once, then handles what no backend needs to know:
empty sizes, dilation (d ordinary windows over the residue classes of the tokens, one group of
heads per dilation), the output's dtype and layout. The backends (:mod:`swa_tutorial.backends`)
each compute one ordinary (left, right) window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.backends import check_backend, load
from swa_tutorial.core.precision import OutputCast, accumulation_dtype, without_autocast
from swa_tutorial.core.validation import check_key_padding_mask, check_qkv, check_scale
from swa_tutorial.core.windows import (
    check_dilation,
    check_window,
    clip_dilation,
    clip_window,
)


def sliding_window_attention(
    q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, backend="auto", return_lse=False
):
    """Sliding-window attention: each query attends to the keys of its window, in O(L w).

    Args:
        q: queries [B, L, H, d] (batch, sequence, heads, head dim), float64, float32, float16 or
            bfloat16, on any device, any strides.
        k: keys [B, L, H, d], the dtype and device of q.
        v: values [B, L, H, d_v], the dtype and device of q (d_v may differ from d).
        window: which keys query i attends, both ends inclusive:

            * an int w >= 1: keys i - w .. i + w (Longformer's symmetric window, 2w + 1 keys);
            * a pair (left, right) of ints >= 0: keys i - left .. i + right (FlashAttention's
              ``window_size``). (w, 0) is a causal window of w + 1 keys, (0, 0) the token alone;
              None for a side means no limit ((None, 0) is causal attention).

            :mod:`swa_tutorial.integrations.conventions` converts other libraries' settings.
        key_padding_mask: optional bool [B, L]; True marks a padding key that no query attends
            (as in ``torch.nn.MultiheadAttention``).
        scale: the factor on q . k before the softmax, a finite real; default 1 / sqrt(d).
        dilation: an int d >= 1, or one int per head: query i attends key j when j - i is a
            multiple of d and -left d <= j - i <= right d (the Longformer paper's dilated window).
        backend: "auto" (the default), "chunks" (the book's algorithm) or "dense"
            (:mod:`swa_tutorial.backends`). Every backend computes the same attention.
        return_lse: also return each query's log-sum-exp of its scores, float32 (float64 for
            float64 inputs) [B, L, H].

    Returns:
        [B, L, H, d_v], contiguous, the dtype and device of q (and lse, with ``return_lse``).
        A query with no key to attend (its window all padding) gets a zero output (lse -inf).
        Differentiable in q, k and v. Empty sizes (B, L, H, d or d_v = 0) work as in
        ``scaled_dot_product_attention``: with d = 0 every score is 0, so each query averages
        its window's values.

    Precision: for float16 and bfloat16 inputs the scores are accumulated and kept in float32
    (the scale applied in float32), the softmax and the P x V sums run in float32, and only the
    output is rounded to the input dtype. Masked keys never get weight. A NaN or infinity in
    q or k makes NaN exactly the rows that score it inside their window; one in v reaches at
    least the rows whose window holds it (blocked algorithms multiply zero weights by nearby
    values too, and 0 x NaN is NaN). Non-finite inputs are never hidden.
    """
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    out, lse = attend(
        q, k, v, window, key_padding_mask=key_padding_mask, scale=scale, dilation=dilation, backend=backend
    )
    out = OutputCast.apply(out, q.dtype)
    return (out, lse) if return_lse else out


def attend(q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, backend="auto"):
    """:func:`~swa_tutorial.sliding_window_attention` before the final rounding: (out, lse),
    both in the accumulation dtype (float32 for half inputs, float64 for float64), out
    [B, L, H, d_v] and lse [B, L, H]. For code that combines several attentions (global tokens,
    shards) and rounds once at the end."""
    check_qkv(q, k, v)
    window = check_window(window)
    B, L, H, d = q.shape
    check_key_padding_mask(key_padding_mask, B, L, q.device)
    acc = accumulation_dtype(q.dtype)
    scale = check_scale(scale, d, acc)
    dilations = check_dilation(dilation, H)
    backend = load(check_backend(backend))
    with without_autocast(q.device):
        return _attend(backend, q, k, v, window, key_padding_mask, scale, dilations)


def _attend(backend, q, k, v, window, key_padding_mask, scale, dilations):
    """:func:`attend` after validation: empty sizes, then one backend call per dilation."""
    B, L, H, d = q.shape
    acc = accumulation_dtype(q.dtype)
    if B * L * H == 0:  # nothing to attend: empty results, connected to every input (zero gradients)
        connected = (q.sum() + k.sum() + v.sum()).to(acc) * 0  # a 0 that depends on q, k and v
        return v.to(acc) * 0 + connected, q.new_empty(B, L, H, dtype=acc) + connected
    if d == 0:  # every score is 0: a zero column changes no score and keeps the backends' shapes
        q, k = F.pad(q, (0, 1)), F.pad(k, (0, 1))
    if v.shape[-1] == 0:  # likewise a zero value column, dropped after
        out, lse = _by_dilation(backend, q, k, F.pad(v, (0, 1)), window, key_padding_mask, scale, dilations)
        return out[..., :0], lse
    return _by_dilation(backend, q, k, v, window, key_padding_mask, scale, dilations)


def _by_dilation(backend, q, k, v, window, key_padding_mask, scale, dilations):
    """One backend call per distinct dilation, on the heads that have it, heads back in order."""
    groups = sorted(set(dilations))
    if len(groups) == 1:
        return _dilated(backend, q, k, v, window, key_padding_mask, scale, groups[0])
    heads = [[h for h, d in enumerate(dilations) if d == g] for g in groups]
    parts = [
        _dilated(backend, q[:, :, hs], k[:, :, hs], v[:, :, hs], window, key_padding_mask, scale, g)
        for g, hs in zip(groups, heads)
    ]
    order = torch.tensor([h for hs in heads for h in hs], device=q.device).argsort()  # inverse permutation
    out, lse = (torch.cat([part[n] for part in parts], dim=2)[:, :, order] for n in (0, 1))
    return out, lse


def _dilated(backend, q, k, v, window, key_padding_mask, scale, d):
    """One dilation d for all of q's heads: d ordinary windows over the residue classes.

    Tokens i = mu d + kappa (kappa = 0 .. d - 1) form class kappa, in which token i sits at place
    mu. Query i attends key j only when j - i is a multiple of d, that is when both are in the
    same class, and then -left d <= j - i <= right d means -left <= mu_j - mu_i <= right: an
    ordinary window inside the class. So the sequence is padded to a multiple of d (padding keys
    masked), folded into d sequences of L / d tokens as extra batch rows, attended, and unfolded.
    """
    B, L = q.shape[:2]
    if d == 1:
        return backend(q, k, v, clip_window(window, L - 1), key_padding_mask, scale)
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
    out, lse = backend(classes(q), classes(k), classes(v), clip_window(window, places - 1), padding, scale)

    def unfold(x):  # [B*d, L/d, ...] -> [B, L, ...]
        return x.unflatten(0, (B, d)).transpose(1, 2).flatten(1, 2)[:, :L]

    return unfold(out), unfold(lse)
