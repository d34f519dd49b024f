"""Grouped heads: H query heads share H_kv key/value heads (grouped-query attention).

q has H heads, k and v have H_kv, and H is a multiple of H_kv: query head h reads key/value head
h // (H / H_kv), so consecutive groups of H / H_kv query heads share one. H_kv = 1 is multi-query
attention, H_kv = H ordinary multi-head attention. A key's gradient is the sum over the query
heads that read it.
"""

from __future__ import annotations

import torch


def repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """k or v [..., H_kv, c] as [..., H, c], each kv head repeated for its query heads (a copy;
    ``x`` itself when H_kv = H). For paths that do not index the kv head themselves."""
    kv_heads = x.shape[-2]
    if kv_heads == heads:
        return x
    return x.repeat_interleave(heads // kv_heads, dim=-2)


def kv_heads_for(query_heads: list[int], heads: int, kv_heads: int) -> list[int]:
    """The kv heads (an index into k's head dim) that a subset of the query heads reads, so that
    ``q[..., query_heads, :]`` and ``k[..., kv_heads_for(...), :]`` are again grouped heads.

    When the subset is made of whole groups, each of their kv heads once; otherwise one kv head per
    query head (the subset then becomes ordinary multi-head attention).
    """
    group = heads // kv_heads
    whole = sorted({h // group for h in query_heads})
    if list(query_heads) == [g * group + r for g in whole for r in range(group)]:
        return whole
    return [h // group for h in query_heads]
