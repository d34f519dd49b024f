"""The specification: two slow but obviously correct forms of sliding-window attention.

Every fast path in the package is tested against these (in float64, on the CPU).

* :func:`dense_attention` builds the whole L x L score matrix S = Q K^T and masks every cell
  outside the window (:func:`dense_band_mask`, built from index arithmetic): O(L^2). It is also
  the specification of grouped heads, fewer or more queries than keys, the softcap, attention
  sinks and packed sequences, each written plainly from its definition.
* :func:`loop_attention` is the per-query loop the source document warns about: query i looks
  at the keys of its window and nothing else. O(L w) work, but L small products in a Python loop.

Both take the arguments of :func:`swa_tutorial.sliding_window_attention` (every window form of
:mod:`swa_tutorial.core.windows`, dilation one per head or for all) and agree with it on everything it
promises: padded keys never get weight, and a query with no key to attend gets a zero output
(not NaN). They compute in the dtype of q.

Non-finite inputs are never hidden. A NaN or infinity in q or k makes NaN exactly the rows that
score it inside their window. One in v reaches every row whose window holds it; dense attention
(and every blocked algorithm: the chunks, the tiles, FlashAttention) also multiplies zero
weights by values outside a row's window, and 0 x NaN is NaN, so there it may reach more rows.

:func:`dense_longformer_attention` is the specification of Longformer's global attention
(:mod:`swa_tutorial.integrations.longformer`): the window plus global columns and rows, as one L x L mask.
"""

from __future__ import annotations

import itertools

import torch

from swa_tutorial.core.packing import check_packing
from swa_tutorial.core.validation import (
    check_grouped_qkv,
    check_key_padding_mask,
    check_qkv,
    check_scale,
    check_sinks,
    check_softcap,
    check_token_mask,
)
from swa_tutorial.core.windows import (
    check_dilation,
    check_window,
    clip_dilation,
    clip_window,
    window_mask,
)


def dense_band_mask(seq_len: int, window, device=None, *, dilation: int = 1) -> torch.Tensor:
    """The window as a dense boolean matrix: bool [L, L], True where query i may attend key j.

    For an int w it is the band ``|i - j| <= w``; in general (j - i) % d == 0 and
    -left * d <= j - i <= right * d (:func:`swa_tutorial.core.windows.window_mask`).
    """
    return window_mask(seq_len, window, device, dilation=dilation)


def _checked(q, k, v, window, key_padding_mask, scale, dilation):
    """Validate the arguments; return ((left, right), scale, one dilation per head)."""
    check_qkv(q, k, v)
    window = check_window(window)
    B, L, H, d = q.shape
    check_key_padding_mask(key_padding_mask, B, L, q.device)
    return window, check_scale(scale, d), check_dilation(dilation, H)


def allowed_keys(seq_len, window, dilations, key_padding_mask=None, device=None, *, key_len=None) -> torch.Tensor:
    """Which keys each query may attend: bool [B, H, L, L_k] (B = 1 without a padding mask).

    The window of each head (its own dilation), measured from query i's key position
    i + L_k - L (L_k = ``key_len``, default L: the queries are the last L of the L_k positions)
    and, with ``key_padding_mask`` [B, L_k] (True = padding), no padding key.
    """
    per_head = [window_mask(seq_len, window, device, dilation=d, key_len=key_len) for d in dilations]
    if not per_head:  # no heads
        return torch.zeros(1, 0, seq_len, seq_len if key_len is None else key_len, dtype=torch.bool, device=device)
    allowed = torch.stack(per_head)[None]  # 1 x H x L x L_k
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]  # B x H x L x L_k
    return allowed


def dense_attention(
    q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, softcap=0.0, sinks=None,
    cu_seqlens_q=None, cu_seqlens_k=None, return_lse=False,
):
    """Sliding-window attention through the full L_q x L_k score matrix: the specification of
    every argument :func:`swa_tutorial.sliding_window_attention` takes, from its definition.

    q [B, L_q, H, d], k [B, L_k, H_kv, d], v [B, L_k, H_kv, d_v]; key_padding_mask bool [B, L_k],
    True = padding. Returns out [B, L_q, H, d_v] in the dtype of q (computed in that dtype), and
    with ``return_lse`` each row's log-sum-exp [B, L_q, H] too (-inf for a row with no key).

    * Grouped heads: query head h reads key/value head h // (H / H_kv): k and v are repeated.
    * L_q != L_k: query i sits at key position p = i + L_k - L_q and attends key j when
      (j - p) % d == 0 and -left d <= j - p <= right d (the queries end-aligned).
    * ``softcap`` c > 0: each score s = scale q . k becomes c tanh(s / c), before the mask.
    * ``sinks`` [H]: one more column in every row of head h, holding the logit sinks[h], allowed
      everywhere, in the softmax and dropped from the product with v.
    * ``cu_seqlens_q``, ``cu_seqlens_k`` (int32 [n + 1]): packed documents, q [T_q, H, d] and k, v
      [T_k, H_kv, ...]: each document alone is one batch row of this function, the results
      concatenated: out [T_q, H, d_v], lse [T_q, H].
    """
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        return _packed(q, k, v, window, key_padding_mask, scale, dilation, softcap, sinks, cu_seqlens_q, cu_seqlens_k, return_lse)
    check_grouped_qkv(q, k, v)
    window = check_window(window)
    B, L_q, H, d = q.shape
    L_k, H_kv = k.shape[1:3]
    check_key_padding_mask(key_padding_mask, B, L_k, q.device)
    scale, softcap, dilations = check_scale(scale, d), check_softcap(softcap), check_dilation(dilation, H)
    check_sinks(sinks, H, q.device)
    k, v = (x.repeat_interleave(H // H_kv if H_kv else 1, dim=2) for x in (k, v))  # B x L_k x H x ...
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L_q x L_k
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    allowed = allowed_keys(L_q, window, dilations, key_padding_mask, q.device, key_len=L_k)  # B x H x L_q x L_k
    if sinks is not None:
        sink = sinks.to(q.dtype)[None, :, None, None].expand(B, H, L_q, 1)
        scores = torch.cat([scores, sink], dim=-1)  # B x H x L_q x (L_k + 1)
        allowed = torch.cat([allowed.expand(B, H, L_q, L_k), torch.ones_like(sink, dtype=torch.bool)], dim=-1)
    out = torch.einsum("bhij,bjhd->bihd", _probabilities(scores, allowed)[..., :L_k], v)
    if not return_lse:
        return out
    return out, scores.masked_fill(~allowed, float("-inf")).logsumexp(dim=-1).transpose(1, 2)


def _packed(q, k, v, window, key_padding_mask, scale, dilation, softcap, sinks, cu_seqlens_q, cu_seqlens_k, return_lse):
    """:func:`dense_attention` of packed documents: each one alone, a batch of one."""
    check_grouped_qkv(q, k, v, packed=True)
    packing = check_packing(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k)
    ends_q, ends_k = ([0, *itertools.accumulate(n)] for n in (packing.q_lengths, packing.k_lengths))
    outs, lses = [q.new_zeros(0, q.shape[1], v.shape[-1])], [q.new_zeros(0, q.shape[1])]
    for m in range(len(ends_q) - 1):
        doc_q, doc_k = slice(ends_q[m], ends_q[m + 1]), slice(ends_k[m], ends_k[m + 1])
        out, lse = dense_attention(q[None, doc_q], k[None, doc_k], v[None, doc_k], window, scale=scale,
                                   dilation=dilation, softcap=softcap, sinks=sinks, return_lse=True)
        outs.append(out[0])
        lses.append(lse[0])
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out


def _probabilities(scores, allowed):
    """The softmax of each row of ``scores`` [B, H, L, L] over its ``allowed`` cells; 0 elsewhere."""
    sees_a_key = allowed.any(dim=-1, keepdim=True)  # B x H x L x 1
    # A query with no key would be a row of -inf, whose softmax is NaN: give it every key, then
    # zero its output. Its gradient is then 0 too, not NaN.
    probs = scores.masked_fill(~(allowed | ~sees_a_key), float("-inf")).softmax(dim=-1)
    return torch.where(sees_a_key, probs, 0.0)


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


def dense_longformer_attention(
    q, k, v, window, *, global_mask, q_global=None, k_global=None, v_global=None,
    key_padding_mask=None, scale=None, dilation=1,
) -> torch.Tensor:
    """Longformer's attention (a window plus global tokens) through the full L x L matrix.

    The Longformer paper (Beltagy, Peters and Cohan 2020, section 3.1 and Figure 2d) as one mask:
    query i may attend key j when

        (j is in i's window  or  j is global  or  i is global)  and neither is padding,

    the band, the global columns and the global rows. A global token that is also padding is
    padding. The rows of global tokens score ``q_global`` against ``k_global`` and average
    ``v_global`` (each the local tensor when None); every other row uses q, k and v, global keys
    included. A padding token's row is 0, as in both Longformer implementations.

    q, k, q_global, k_global: [B, L, H, d]; v, v_global: [B, L, H, d_v]; global_mask and
    key_padding_mask: bool [B, L] (True = global token, True = padding). Returns
    [B, L, H, d_v], computed in the dtype of q.
    """
    window, scale, dilations = _checked(q, k, v, window, key_padding_mask, scale, dilation)
    B, L, H, _ = q.shape
    q_global, k_global, v_global = (
        local if x is None else x for x, local in ((q_global, q), (k_global, k), (v_global, v))
    )
    check_token_mask(global_mask, "global_mask", "True = global token", B, L, q.device)
    padding = torch.zeros(B, L, dtype=torch.bool, device=q.device) if key_padding_mask is None else key_padding_mask
    is_global = global_mask & ~padding  # B x L
    row_global = is_global[:, None, :, None]  # B x 1 x L x 1: query i is global
    allowed = allowed_keys(L, window, dilations)  # 1 x H x L x L: the band
    allowed = allowed | is_global[:, None, None, :] | row_global  # B x H x L x L
    allowed = allowed & ~padding[:, None, None, :] & ~padding[:, None, :, None]
    local = torch.einsum("bihd,bjhd->bhij", q, k)
    scores = torch.where(row_global, torch.einsum("bihd,bjhd->bhij", q_global, k_global), local) * scale
    probs = _probabilities(scores, allowed)  # B x H x L x L
    out_local = torch.einsum("bhij,bjhd->bihd", probs, v)
    out_global = torch.einsum("bhij,bjhd->bihd", probs, v_global)
    return torch.where(is_global[:, :, None, None], out_global, out_local)  # B x L x H x d_v
