"""FlashAttention 2's call, on any device: ``flash_attn_func`` and ``flash_attn_varlen_func``.

Code written for FlashAttention (Dao-AILab/flash-attention, ``flash_attn/flash_attn_interface.py``)
runs unchanged with ``from swa_tutorial import flash_attn_func, flash_attn_varlen_func``: the same
arguments, in the same order, with the same meaning, computed by
:func:`swa_tutorial.sliding_window_attention` on any device and dtype (FlashAttention needs an
NVIDIA GPU and float16/bfloat16). The rules, as FlashAttention's docstrings state them:

* layout [B, L, H, d], the package's own (varlen: [total_tokens, H, d] with ``cu_seqlens``);
* grouped heads: k and v may have H_kv heads, H a multiple of H_kv; query head h reads key/value
  head h // (H / H_kv);
* ``window_size=(left, right)``: query i attends keys i + Lk - Lq - left .. i + Lk - Lq + right,
  inclusive; -1 means no limit on that side; ``causal=True`` is the same as right = 0. With
  Lq != Lk the queries are the last Lq of the keys' positions (the mask "aligned to the bottom
  right corner"), and a query with no key to attend gives 0;
* ``softcap`` c > 0: scores s become c tanh(s / c) before the softmax (0: none);
* ``dropout_p``: attention dropout (pass 0.0 in evaluation, as FlashAttention asks).

Differences, each deliberate:

* ``alibi_slopes`` and ``block_table`` (a paged key/value cache) are not implemented: anything
  but None is a ValueError naming the argument, never silently ignored.
* ``return_attn_probs=True`` returns ``(out, softmax_lse, None)``: the log-sum-exp in
  FlashAttention's layout ([B, H, Lq]; varlen [H, total_q]), float32 (float64 for float64
  inputs), but no ``S_dmask``: FlashAttention documents its probabilities as "for testing only"
  and "not guaranteed to be correct"; computing them would need the L x L matrix this package
  avoids. A row with no key has lse -inf here (the log of an empty sum); FlashAttention's
  kernel writes +inf there (``softmax.h``), its docstring does not say.
* ``deterministic`` is accepted and changes nothing: every backend of the package is
  deterministic (FlashAttention's flag chooses a deterministic backward pass).
* ``sinks`` (keyword only, not in FlashAttention 2): one logit per query head, float [H], added
  to each row's softmax denominator (GPT-OSS's attention sinks; vLLM's FlashAttention 3 fork
  calls it ``s_aux``, FlashAttention 4 ``learnable_sink``), in any floating dtype (they join the
  softmax in float32, float64 for float64 inputs). The lse returned includes it.
* dropout draws from PyTorch's generator (reproducible under ``torch.manual_seed``), not from
  FlashAttention's Philox counter, so the dropped positions differ from FlashAttention's.
"""

from __future__ import annotations

import torch

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.validation import check_dropout, check_scale
from swa_tutorial.integrations.conventions import from_flash_attn


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    *,
    sinks=None,
):
    """FlashAttention 2's ``flash_attn_func`` (see the module's docstring for the differences).

    Args:
        q: queries [B, Lq, H, d].
        k: keys [B, Lk, H_kv, d], H a multiple of H_kv.
        v: values [B, Lk, H_kv, d_v].
        dropout_p: attention dropout probability, in [0, 1).
        softmax_scale: the factor on q . k; default 1 / sqrt(d).
        causal: bottom-right aligned causal mask (right side of the window 0).
        window_size: (left, right), -1 for no limit; measured from key position i + Lk - Lq.
        softcap: c > 0 caps the scores at c tanh(s / c); 0 for none.
        alibi_slopes: must be None (not implemented).
        deterministic: accepted; the package is always deterministic.
        return_attn_probs: also return the lse [B, H, Lq] and None (no S_dmask).
        sinks: optional float [H], one sink logit per query head (an extension).

    Returns:
        out [B, Lq, H, d_v] in q's dtype; with ``return_attn_probs`` ``(out, lse, None)``.
    """
    window = _window(q, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic, return_attn_probs)
    out, lse = sliding_window_attention(
        q, k, v, window, scale=softmax_scale, softcap=softcap, sinks=sinks, dropout=dropout_p, return_lse=True
    )
    return (out, lse.transpose(1, 2), None) if return_attn_probs else out  # lse [B, Lq, H] -> [B, H, Lq]


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
    *,
    sinks=None,
):
    """FlashAttention 2's ``flash_attn_varlen_func``: packed documents, each attending only itself.

    The arguments it shares with :func:`flash_attn_func` (``dropout_p`` to ``return_attn_probs``,
    and ``sinks``) mean the same; each document has its own end alignment (its queries are the
    last of its keys' positions).

    Args:
        q: queries [total_q, H, d], the documents one after another.
        k: keys [total_k, H_kv, d].
        v: values [total_k, H_kv, d_v].
        cu_seqlens_q: int32 [n + 1], document i's queries are rows cu_seqlens_q[i] ..
            cu_seqlens_q[i + 1] - 1 (starts at 0, ends at total_q).
        cu_seqlens_k: int32 [n + 1], the same for the keys and values.
        max_seqlen_q, max_seqlen_k: ints, at least the longest document's query / key count.
        block_table: must be None (a paged cache is not implemented).

    Returns:
        out [total_q, H, d_v] in q's dtype; with ``return_attn_probs`` ``(out, lse, None)``,
        lse [H, total_q].
    """
    if block_table is not None:
        raise ValueError("block_table must be None: a paged key/value cache is not implemented in swa_tutorial")
    window = _window(q, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic, return_attn_probs)
    out, lse = sliding_window_attention(
        q, k, v, window, scale=softmax_scale, softcap=softcap, sinks=sinks, dropout=dropout_p, return_lse=True,
        cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
    )
    return (out, lse.transpose(0, 1), None) if return_attn_probs else out  # lse [total_q, H] -> [H, total_q]


def _window(q, dropout_p, softmax_scale, causal, window_size, alibi_slopes, deterministic, return_attn_probs):
    """The arguments both calls share, checked under FlashAttention's names (the entry point
    would name ``dropout_p`` and ``softmax_scale`` by its own); the window as (left, right)
    (None: no limit)."""
    check_dropout(dropout_p, "dropout_p")
    check_scale(softmax_scale, 1, accumulation_dtype(q.dtype) if isinstance(q, torch.Tensor) else torch.float64,
                "softmax_scale")
    if alibi_slopes is not None:
        raise ValueError("alibi_slopes must be None: ALiBi biases are not implemented in swa_tutorial")
    for name, flag in (("deterministic", deterministic), ("return_attn_probs", return_attn_probs)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    return from_flash_attn(window_size, causal=causal)
