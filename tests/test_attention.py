"""The public ``sliding_window_attention`` against the references, on random problems.

float64: the chunked path, ``dense_attention`` and ``loop_attention`` agree within 1e-10
(absolute; every output row is a convex combination of standard normal value rows, so O(1)).

float32, float16, bfloat16: the inputs are rounded to the dtype first and the reference is
``dense_attention`` in float64 on those same rounded inputs, so only the rounding inside the
computation is measured. Since an output row is a convex combination of value rows, the error is
measured relative to the values: e = max |out - ref| / max |v|. To first order, with u the unit
roundoff of the dtype (2^-24, 2^-11, 2^-8), u_acc that of the accumulations (float32: PyTorch's
matmuls and the package's softmax accumulate float16/bfloat16 in float32; float32 in float32),
r = u_acc / u, d the head dim, n = 2w + 1 the band width and S = scale * max_ij sum_m |q_im k_jm|
the largest a score could be:

* a score: q * scale rounded (u S), the d-term dot product accumulated (d u_acc S), the result
  rounded (u S): |ds| <= (2 + d r) u S;
* the softmax moves by sum_j |dp_j| <= 2 max |ds| (its Jacobian is diag(p) - p p^T, whose
  norm from max-norm to 1-norm is at most 2), and rounds on its own by (n + 2) u_acc;
* the probabilities are rounded to the dtype: sum_j |dp_j| <= u;
* P V is accumulated (n u_acc) and rounded (u), each times max |v|.

So e <= u (2 (2 + d r) S + (n + 2) r + 1 + n r + 1), the bound :func:`rounding_bound` computes for
each case and the test asserts. It is a worst case: for bfloat16 with S around 5 it is about 0.1
of max |v|, still far below the O(max |v|) error of attending to a wrong key, which the float64
tests pin down to 1e-10 anyway.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from cases import assert_close64, blind_queries, cases
from swa_tutorial import dense_attention, loop_attention, sliding_window_attention

HALF_AND_SINGLE = (torch.float32, torch.float16, torch.bfloat16)


def run(fn, case, q, k, v, mask):
    return fn(q, k, v, case.window, key_padding_mask=mask, scale=case.scale)


@given(cases())
def test_float64_matches_dense_reference(case):
    q, k, v, mask = case.tensors()
    out = run(sliding_window_attention, case, q, k, v, mask)
    dense = run(dense_attention, case, q, k, v, mask)
    assert out.shape == v.shape and out.dtype == torch.float64
    assert torch.isfinite(out).all()
    assert_close64(out, dense)
    blind = blind_queries(case.seq_len, case.window, mask).expand(case.batch, -1)  # B x L
    assert (out[blind] == 0).all()  # a query that sees only padding gets exactly zero


@given(cases(max_len=120))
def test_loop_reference_agrees(case):
    """The two references, built differently, agree with each other and with the chunked path."""
    q, k, v, mask = case.tensors()
    loop = run(loop_attention, case, q, k, v, mask)
    assert_close64(run(dense_attention, case, q, k, v, mask), loop)
    assert_close64(run(sliding_window_attention, case, q, k, v, mask), loop)


def rounding_bound(q, k, window, scale, dtype) -> float:
    """The first-order rounding error bound of the module docstring, relative to max |v|."""
    u = torch.finfo(dtype).eps / 2
    r = 1.0 if dtype == torch.float32 else 2**-24 / u  # accumulation precision, in units of u
    d, n = q.shape[-1], 2 * window + 1
    scale = d**-0.5 if scale is None else scale
    S = scale * torch.einsum("bihd,bjhd->bhij", q.double().abs(), k.double().abs()).max().item()
    return u * (2 * (2 + d * r) * S + (n + 2) * r + 1 + n * r + 1)


@given(cases(), st.sampled_from(HALF_AND_SINGLE))
def test_low_precision_within_rounding_bound(case, dtype):
    q, k, v, mask = case.tensors(dtype)
    out = run(sliding_window_attention, case, q, k, v, mask)
    assert out.dtype == dtype and out.shape == v.shape
    assert torch.isfinite(out).all()
    ref = run(dense_attention, case, q.double(), k.double(), v.double(), mask)
    error = (out.double() - ref).abs().max().item() / max(v.double().abs().max().item(), 1e-300)
    assert error <= rounding_bound(q, k, min(case.window, case.seq_len), case.scale, dtype)
    blind = blind_queries(case.seq_len, case.window, mask).expand(case.batch, -1)
    assert (out[blind] == 0).all()


@pytest.mark.parametrize("dtype", (torch.float64, *HALF_AND_SINGLE))
def test_fully_padded_rows_give_zeros_not_nan(dtype):
    q, k, v = (torch.randn(3, 20, 2, 4, dtype=torch.float64).to(dtype) for _ in range(3))
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0] = True  # a batch row that is all padding
    mask[1, 5:16] = True  # a gap of 11 = 2w + 1 keys: query 10 sees only padding
    out = sliding_window_attention(q, k, v, 5, key_padding_mask=mask)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, 10] == 0).all()
    assert (out[1, :10] != 0).any() and (out[2] != 0).all()


@pytest.mark.parametrize("L, window", [(1, 1), (1, 5), (7, 6), (7, 100), (64, 63)])
def test_window_covering_the_sequence_is_full_attention(L, window):
    """With w >= L - 1 every query sees every key: PyTorch's own unmasked attention."""
    q, k, v = (torch.randn(2, L, 3, 8, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert_close64(sliding_window_attention(q, k, v, window), full)


def test_strided_inputs():
    """Inputs that are views in another layout ([B, H, L, d] transposed) give the same result."""
    q, k, v = (torch.randn(2, 3, 50, 8, dtype=torch.float64).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    expected = dense_attention(q, k, v, 4)
    assert_close64(sliding_window_attention(q, k, v, 4), expected)
    assert_close64(sliding_window_attention(*(x.contiguous() for x in (q, k, v)), 4), expected)


def test_inputs_are_not_modified():
    q, k, v = (torch.randn(2, 30, 2, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 30) < 0.3
    before = [x.clone() for x in (q, k, v, mask)]
    sliding_window_attention(q, k, v, 3, key_padding_mask=mask, scale=0.5)
    assert all(torch.equal(x, y) for x, y in zip((q, k, v, mask), before))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_nothing_is_tied_to_the_cpu(dtype):
    """On the 'meta' device (shapes only) the whole computation runs: no step assumes a device."""
    q, k = (torch.empty(2, 37, 3, 16, device="meta", dtype=dtype) for _ in range(2))
    v = torch.empty(2, 37, 3, 5, device="meta", dtype=dtype)
    mask = torch.empty(2, 37, device="meta", dtype=torch.bool)
    out = sliding_window_attention(q, k, v, 4, key_padding_mask=mask)
    assert (out.shape, out.device, out.dtype) == ((2, 37, 3, 5), torch.device("meta"), dtype)
