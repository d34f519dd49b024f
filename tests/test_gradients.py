"""Gradients of ``sliding_window_attention`` with respect to q, k and v.

``torch.autograd.gradcheck`` compares the analytic gradients with finite differences on small
float64 problems; on larger random problems the gradients must equal those of the dense float64
reference within 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import assert_close64, cases
from swa_tutorial import dense_attention, sliding_window_attention


def padding(kind: str, B: int, L: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, L // 2 :] = True  # trailing padding
    if kind == "empty_row":
        mask[-1] = True  # a batch row that is all padding
    return mask


@pytest.mark.parametrize(
    "L, window, kind",
    [
        (1, 1, "none"),
        (4, 2, "none"),  # L = 2w: a single chunk
        (5, 2, "tail"),  # L not a multiple of w
        (8, 2, "empty_row"),
        (9, 3, "tail"),
        (6, 9, "tail"),  # window beyond L
        (11, 1, "empty_row"),
    ],
)
def test_gradcheck(L, window, kind):
    B, H, d, dv = 2, 2, 3, 2
    g = torch.Generator().manual_seed(L * 100 + window)
    q, k = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, L, H, dv, generator=g, dtype=torch.float64, requires_grad=True)
    mask = padding(kind, B, L)

    def attention(q, k, v):
        return sliding_window_attention(q, k, v, window, key_padding_mask=mask)

    assert torch.autograd.gradcheck(attention, (q, k, v))


@settings(max_examples=25)
@given(cases(max_len=160))
def test_gradients_match_dense_reference(case):
    q, k, v, mask = case.tensors()
    grad_out = torch.randn(*v.shape, generator=torch.Generator().manual_seed(case.seed), dtype=v.dtype)

    def gradients(fn):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*inputs, case.window, key_padding_mask=mask, scale=case.scale)
        return torch.autograd.grad(out, inputs, grad_out)

    for fast, dense in zip(gradients(sliding_window_attention), gradients(dense_attention)):
        assert torch.isfinite(fast).all()
        assert_close64(fast, dense, tol=1e-10 * max(1.0, dense.abs().max().item()))


@settings(max_examples=10)
@given(cases(max_len=120), st.sampled_from((torch.float32, torch.float16, torch.bfloat16)))
def test_low_precision_gradients(case, dtype):
    """Backward runs in every dtype and is about as accurate as the dense computation in that dtype.

    Gradients have the input's dtype and are finite. Their error against the float64 dense gradient
    (of the same rounded inputs) is measured against the error of ``dense_attention`` run in the
    same dtype, the straightforward computation: at most 8 times it, plus 32 u times the gradient's
    largest entry (u the unit roundoff) for gradients that cancel to almost nothing, whose rounding
    error is set by the size of the terms rather than of the result.
    """
    q, k, v, mask = case.tensors(dtype)
    grad_out = torch.randn(*v.shape, generator=torch.Generator().manual_seed(case.seed), dtype=torch.float64)

    def gradients(fn, dtype):
        inputs = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*inputs, case.window, key_padding_mask=mask, scale=case.scale)
        return torch.autograd.grad(out, inputs, grad_out.to(dtype))

    u = torch.finfo(dtype).eps / 2
    exact = gradients(dense_attention, torch.float64)
    fast_and_dense = zip(gradients(sliding_window_attention, dtype), gradients(dense_attention, dtype))
    for (fast, dense), g in zip(fast_and_dense, exact):
        assert fast.dtype == dtype and torch.isfinite(fast).all()
        dense_error = (dense.double() - g).abs().max()
        assert (fast.double() - g).abs().max() <= 8 * dense_error + 32 * u * g.abs().max()
