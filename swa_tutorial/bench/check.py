"""The correctness check that precedes every timing: float64 dense attention on query slices.

A float64 dense reference of the whole problem needs 8 B H L^2 bytes (25 GB at L = 16384 with
12 heads), so it is computed on slices instead, which is exact: query i sees only keys
i - w .. i + w, so the outputs of queries a .. b - 1 depend only on tokens a - w .. b + w - 1,
and dense attention on that sub-sequence gives exactly those outputs. Their gradients reach one
window further: the gradient of key j collects from queries j - w .. j + w, whose windows reach
j - 2w .. j + 2w, so the gradients of tokens a .. b - 1 come exactly from the sub-sequence
a - 2w .. b + 2w - 1 (with the same output gradient on it). The slices sit at the start, the
middle and the end of the sequence: the two ends are where the band's invalid corners are.
"""

from __future__ import annotations

import torch

from ..reference import dense_attention

# Largest error allowed, relative to the largest reference value: float64 is exact up to rounding,
# the others are bounded by their rounding (float32 about 1e-7, float16 1e-3, bfloat16 8e-3).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def query_slices(seq_len: int, window: int) -> list[tuple[int, int]]:
    """The query ranges [a, b) that are checked: 2w queries (or all) at the start, middle and end."""
    n = min(seq_len, 2 * window)
    starts = sorted({0, (seq_len - n) // 2, seq_len - n})
    return [(a, a + n) for a in starts]


def _reference(q, k, v, g, window, a, b, reach):
    """Float64 dense attention on tokens a - reach .. b + reach - 1: outputs and, if g, gradients
    for the queries a .. b - 1."""
    lo, hi = max(0, a - reach), min(q.shape[1], b + reach)
    sub = [x[:, lo:hi].detach().double().requires_grad_(g is not None) for x in (q, k, v)]
    out = dense_attention(*sub, window)
    rows = slice(a - lo, b - lo)
    if g is None:
        return [out[:, rows].detach()]
    out.backward(g[:, lo:hi].double())
    return [out[:, rows].detach()] + [x.grad[:, rows] for x in sub]


def check(out, q, k, v, window, grad_out=None) -> dict:
    """Compare ``out`` [B, L, H, d] (and, with ``grad_out``, q.grad, k.grad, v.grad) with float64.

    Returns {"max_rel_err", "tolerance", "ok", "slices"}: the largest |result - reference| over
    the checked slices divided by the largest |reference| value of its tensor.
    """
    L = q.shape[1]
    reach = window if grad_out is None else 2 * window
    worst = 0.0
    slices = query_slices(L, window)
    for a, b in slices:
        refs = _reference(q, k, v, grad_out, window, a, b, reach)
        got = [out] if grad_out is None else [out, q.grad, k.grad, v.grad]
        for x, ref in zip(got, refs):
            err = ((x[:, a:b].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            worst = max(worst, err if err == err else float("inf"))  # NaN counts as a failure
    tol = TOLERANCE[q.dtype]
    return {"max_rel_err": worst, "tolerance": tol, "ok": worst <= tol, "slices": slices}
