"""The online softmax: attention over keys that arrive one tile at a time, no score kept.

Attention for one query row needs ``o = sum_j p_j v_j`` with ``p_j = exp(s_j) / sum_j' exp(s_j')``
over the keys it may attend. The sum in the denominator seems to need every score before the
first weight is known. It does not (Milakov and Gimelshein, 2018, arXiv:1805.02867): keep, for
each row, the largest score seen so far ``m``, the sum ``l`` of ``exp(s_j - m)`` over the keys
seen so far, and the accumulator ``acc = sum_j exp(s_j - m) v_j``. A new tile of scores moves
the maximum to ``m' = max(m, max_j s_j)``; everything summed so far was relative to ``m``, so it
is rescaled by ``exp(m - m')`` before the tile's own terms are added:

    m'   = max(m, max_j s_j)
    l'   = exp(m - m') l   + sum_j exp(s_j - m')
    acc' = exp(m - m') acc + sum_j exp(s_j - m') v_j

After the last tile ``out = acc / l`` and ``lse = m + log l``: exactly the softmax over all the
keys, whatever the tiles were. The fused kernels (FlashAttention; the package's "triton"
backend) run this fold on [rows, keys] tiles in fast memory, so the scores are never stored.

Here it is in plain PyTorch, one tile at a time, for the book to print and check: :func:`start`
gives the state before any key, :func:`step` folds one tile in, :func:`finish` returns
(out, lse). Masked cells are scores of -inf: they get no weight, and a row that has seen no key
yet keeps ``m = -inf``, ``l = 0`` (the step subtracts 0 instead of -inf there, so that
``exp(-inf - m')`` stays 0, never NaN).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RowState(NamedTuple):
    """The running softmax of R query rows: what is kept between tiles, nothing of size L.

    row_max: m [R]; row_sum: l [R]; acc: [R, d_v]. ``l`` and ``acc`` are relative to ``m``:
    ``l = sum exp(s_j - m)``, ``acc = sum exp(s_j - m) v_j`` over the keys folded in so far.
    """

    row_max: torch.Tensor
    row_sum: torch.Tensor
    acc: torch.Tensor


def start(rows: int, value_dim: int, dtype: torch.dtype = torch.float64, device=None) -> RowState:
    """The state before any key: m = -inf, l = 0, acc = 0 (R = ``rows`` rows, d_v = ``value_dim``)."""
    return RowState(
        torch.full((rows,), float("-inf"), dtype=dtype, device=device),
        torch.zeros(rows, dtype=dtype, device=device),
        torch.zeros(rows, value_dim, dtype=dtype, device=device),
    )


def step(state: RowState, scores: torch.Tensor, values: torch.Tensor) -> RowState:
    """Fold one tile of keys into the running softmax.

    scores: [R, T_k], the tile's scores of the R rows (-inf where a row may not attend a key);
    values: [T_k, d_v], the tile's values. Returns the new :class:`RowState`.
    """
    row_max, row_sum, acc = state
    if scores.dim() != 2 or scores.shape[0] != row_max.shape[0]:
        raise ValueError(f"scores must be [R, T_k] with R = {row_max.shape[0]} rows, got {list(scores.shape)}")
    if values.dim() != 2 or values.shape != (scores.shape[1], acc.shape[1]):
        raise ValueError(f"values must be [T_k, d_v] = {[scores.shape[1], acc.shape[1]]}, got {list(values.shape)}")
    new_max = torch.maximum(row_max, scores.amax(dim=1))  # m' [R]
    shift = torch.where(new_max == float("-inf"), 0.0, new_max)  # a row with no key yet: subtract 0
    p = torch.exp(scores - shift[:, None])  # [R, T_k], 0 on masked cells
    rescale = torch.exp(row_max - shift)  # exp(m - m') [R], 0 before the first key
    return RowState(new_max, rescale * row_sum + p.sum(dim=1), rescale[:, None] * acc + p @ values)


def finish(state: RowState) -> tuple[torch.Tensor, torch.Tensor]:
    """out [R, d_v] = acc / l and lse [R] = m + log l; a row that saw no key gets 0 and -inf."""
    row_max, row_sum, acc = state
    seen = row_sum != 0  # l >= 1 once a key is seen (its maximum adds exp(0)); NaN stays NaN
    out = torch.where(seen[:, None], acc / torch.where(seen, row_sum, 1.0)[:, None], 0.0)
    lse = torch.where(seen, row_max + torch.log(row_sum), float("-inf"))
    return out, lse
