"""The entry point on every window shape, against the float64 dense reference.

``sliding_window_attention(q, k, v, window, dilation=...)`` on random problems from
:func:`cases.window_cases`: (left, right) from 0 to beyond L, None sides, int windows, dilations
up to L and one per head, padding, on every backend. The reference is ``dense_attention``, whose
mask is built from index arithmetic (``window_mask``, itself checked cell by cell against its
definition in test_windows.py). Outputs, log-sum-exps and gradients; gradcheck on tiny problems;
half precision against SDPA with the same mask; the work each shape costs; every bad window and
dilation with its message.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import assert_close64, window_cases
from swa_tutorial import dense_attention, loop_attention, sliding_window_attention
from swa_tutorial.backends import BACKENDS
from swa_tutorial.reference import allowed_keys
from swa_tutorial.core.windows import check_dilation, check_window

# The triton backend runs here under Triton's interpreter, slowly: it gets the property test on
# small problems only (test_triton_on_small_problems); tests/test_triton_kernel.py holds the rest.
NAMES = sorted(set(BACKENDS) - {"triton"})


def reference(q, k, v, window, mask, scale, dilation):
    """float64 out [B, L, H, d_v] and lse [B, L, H] of the dense definition, and which queries
    see no key, bool [B, L, H]."""
    B, L, H, d = q.shape
    out = dense_attention(q, k, v, window, key_padding_mask=mask, scale=scale, dilation=dilation)
    allowed = allowed_keys(L, check_window(window), check_dilation(dilation, H), mask)  # B' x H x L x L
    scale = d**-0.5 if scale is None else scale
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    lse = scores.masked_fill(~allowed, float("-inf")).logsumexp(dim=-1).transpose(1, 2)  # B x L x H
    return out, lse, ~allowed.any(dim=-1).transpose(1, 2).expand(B, L, H)


@pytest.mark.parametrize("backend", NAMES)
@given(data=st.data())
def test_out_and_lse_match_the_dense_reference(backend, data):
    case = data.draw(window_cases(max_len=120 if backend == "dense" else 160))
    q, k, v, mask = case.tensors()
    out, lse = sliding_window_attention(q, k, v, case.window, backend=backend, return_lse=True, **case.kwargs(mask))
    ref_out, ref_lse, blind = reference(q, k, v, case.window, mask, case.scale, case.dilation)
    assert out.shape == v.shape and out.dtype == torch.float64 and out.is_contiguous()
    assert_close64(out, ref_out)
    assert torch.equal(lse == float("-inf"), blind)  # exactly the queries with no key
    assert (out[blind] == 0).all()  # get exactly zero
    assert_close64(lse[~blind], ref_lse[~blind])


@pytest.mark.triton
@settings(max_examples=8)
@given(window_cases(max_len=40, head_dims=(1, 3, 16), max_batch=2, max_heads=2))
def test_triton_on_small_problems(case):
    q, k, v, mask = case.tensors()
    out, lse = sliding_window_attention(q, k, v, case.window, backend="triton", return_lse=True, **case.kwargs(mask))
    ref_out, ref_lse, blind = reference(q, k, v, case.window, mask, case.scale, case.dilation)
    assert_close64(out, ref_out)
    assert torch.equal(lse == float("-inf"), blind) and (out[blind] == 0).all()
    assert_close64(lse[~blind], ref_lse[~blind])


@pytest.mark.parametrize("backend", NAMES)
@settings(max_examples=15)
@given(data=st.data())
def test_gradients_through_out_and_lse_match_the_dense_reference(backend, data):
    case = data.draw(window_cases(max_len=80))
    q, k, v, mask = case.tensors()
    g = torch.Generator().manual_seed(case.seed + 1)
    d_out = torch.randn(*v.shape, generator=g, dtype=torch.float64)
    d_lse = torch.randn(*q.shape[:3], generator=g, dtype=torch.float64)

    def entry_point(q, k, v):
        out, lse = sliding_window_attention(q, k, v, case.window, backend=backend, return_lse=True, **case.kwargs(mask))
        return out, lse

    def dense(q, k, v):
        return reference(q, k, v, case.window, mask, case.scale, case.dilation)[:2]

    def gradients(fn):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        out, lse = fn(*inputs)
        lse = lse.masked_fill(lse == float("-inf"), 0.0)  # a query with no key: nothing to differentiate
        return torch.autograd.grad((out * d_out).sum() + (lse * d_lse).sum(), inputs)

    for fast, exact in zip(gradients(entry_point), gradients(dense)):
        assert torch.isfinite(fast).all()
        assert_close64(fast, exact, tol=1e-10 * max(1.0, exact.abs().max().item()))


@pytest.mark.parametrize("window, dilation", [((2, 0), 1), ((None, 1), 2), ((1, 0), (1, 3)), (1, (2, 5))])
def test_gradcheck(window, dilation):
    """Finite differences on tiny float64 problems, through out and lse, with a padded key.
    (Each backend is gradchecked on its own in test_backends.py; here the dilations around it.)"""
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 8, 2, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, 3] = True

    def both(q, k, v):
        out, lse = sliding_window_attention(
            q, k, v, window, key_padding_mask=mask, scale=0.7, dilation=dilation, return_lse=True
        )
        return out, lse.masked_fill(lse == float("-inf"), 0.0)  # queries with no key: constant

    assert torch.autograd.gradcheck(both, (q, k, v))


def sdpa_error(q, k, v, window, dilation, mask, ref):
    """PyTorch SDPA's max error against ``ref`` with the same mask, over the queries with a key."""
    L, H = q.shape[1:3]
    allowed = allowed_keys(L, check_window(window), check_dilation(dilation, H), mask)  # B x H x L x L
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=allowed)
    sees = allowed.any(-1).transpose(1, 2)[..., None]  # B x L x H x 1 (SDPA gives NaN without a key)
    return ((out.transpose(1, 2).double() - ref).abs() * sees).nan_to_num(0.0).max().item()


@pytest.mark.parametrize("backend", NAMES)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("window, dilation", [((16, 0), 1), ((3, 20), 2), ((None, 2), (1, 3, 4, 1))])
def test_half_precision_no_worse_than_sdpa(backend, dtype, window, dilation):
    """float16/bfloat16 with scores of spread about 4: the max error against float64 (on the same
    rounded inputs) at most 1.5 times that of ``scaled_dot_product_attention`` with the same mask."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 96, 4, 64, generator=g, dtype=torch.float64) for _ in range(3))
    q, k, v = (x.to(dtype) for x in (4 * q, k, v))
    mask = torch.rand(2, 96, generator=g) < 0.2
    ref = dense_attention(q.double(), k.double(), v.double(), window, key_padding_mask=mask, dilation=dilation)
    out = sliding_window_attention(q, k, v, window, key_padding_mask=mask, dilation=dilation, backend=backend)
    assert out.dtype == dtype
    ours = (out.double() - ref).abs().max().item()
    assert ours <= 1.5 * sdpa_error(q, k, v, window, dilation, mask, ref)


# The work: what each shape hands the backend.


def recorded_calls(monkeypatch, q, k, v, window, **kwargs):
    """Run the entry point; return [(q's shape, window)] of each backend call it makes."""
    import swa_tutorial.attention as attention

    calls = []

    def recording(*args):
        calls.append((tuple(args[0].shape), args[3]))
        return BACKENDS["chunks"](*args)

    monkeypatch.setattr(attention, "load", lambda name: recording)
    out = sliding_window_attention(q, k, v, window, **kwargs)
    assert_close64(out, dense_attention(q, k, v, window, **kwargs))
    return calls


def test_a_dilated_window_is_d_ordinary_windows_over_the_residue_classes(monkeypatch):
    """Dilation d: one backend call per distinct d, on the heads with that d, each over B d
    sequences of ceil(L / d) tokens with the ordinary (undilated) window: no dilated mask, and
    no more tokens than L rounded up to a multiple of d."""
    B, L, H = 2, 50, 4
    q, k, v = (torch.randn(B, L, H, 8, dtype=torch.float64) for _ in range(3))
    calls = recorded_calls(monkeypatch, q, k, v, (3, 1), dilation=(2, 3, 2, 1))
    assert calls == [((B, L, 1, 8), (3, 1)), ((B * 2, 25, 2, 8), (3, 1)), ((B * 3, 17, 1, 8), (3, 1))]


@pytest.mark.parametrize(
    "window, band",
    [((8, 0), 9), ((7, 0), 9), ((0, 8), 9), ((1, 2), 5), ((5, 11), 17), ((4, 4), 9), ((0, 0), 3)],
)
def test_an_asymmetric_window_costs_a_band_of_about_left_plus_right(window, band, monkeypatch):
    """The chunks backend scores a band of 2 ceil((left + right) / 2) + 1 columns, not the
    2 max(left, right) + 1 of a symmetric window that holds it: a causal (w, 0) costs w + 1
    (w even) or w + 2 (w odd) columns."""
    from swa_tutorial.backends import chunked as chunks

    widths = []
    real = chunks.band_scores
    monkeypatch.setattr(chunks, "band_scores", lambda s: widths.append(s.shape[-1] + 1) or real(s))
    q, k, v = (torch.randn(2, 100, 3, 4, dtype=torch.float64) for _ in range(3))
    assert_close64(sliding_window_attention(q, k, v, window, backend="chunks"), dense_attention(q, k, v, window))
    assert widths == [band]


# Bad windows and dilations, through every entry point.

WINDOW = r"window must be an int w >= 1 or a pair \(left, right\) of ints >= 0 \(None for no limit\)"
BAD = {
    "negative int": (dict(window=-3), ValueError, WINDOW + "; an int window is one-sided and >= 1, got -3"),
    "zero int": (dict(window=0), ValueError, WINDOW + "; an int window is one-sided and >= 1, got 0"),
    "bool window": (dict(window=False), TypeError, WINDOW + ", got bool"),
    "negative left": (dict(window=(-1, 2)), ValueError, r"window's left must be an int >= 0 or None, got -1"),
    "negative right": (dict(window=[4, -2]), ValueError, r"window's right must be an int >= 0 or None, got -2"),
    "bool left": (dict(window=(True, 0)), TypeError, r"window's left must be an int >= 0 or None, got bool"),
    "float right": (dict(window=(1, 2.0)), TypeError, r"window's right must be an int >= 0 or None, got float"),
    "str left": (dict(window=("1", 2)), TypeError, r"window's left must be an int >= 0 or None, got str"),
    "pair of 1": (dict(window=(3,)), ValueError, WINDOW + ", got a sequence of length 1"),
    "pair of 3": (dict(window=(1, 2, 3)), ValueError, WINDOW + ", got a sequence of length 3"),
    "empty pair": (dict(window=()), ValueError, WINDOW + ", got a sequence of length 0"),
    "float window": (dict(window=2.5), TypeError, WINDOW + ", got float"),
    "dict window": (dict(window={"left": 1}), TypeError, WINDOW + ", got dict"),
    "zero dilation": (dict(dilation=0), ValueError, r"dilation must be made of ints >= 1, got 0"),
    "negative dilation": (dict(dilation=-2), ValueError, r"dilation must be made of ints >= 1, got -2"),
    "bool dilation": (dict(dilation=True), TypeError, r"dilation must be an int >= 1 or a sequence of H ints >= 1, got bool"),
    "float dilation": (dict(dilation=2.0), TypeError, r"dilation must be an int >= 1 or a sequence of H ints >= 1, got float"),
    "too few per head": (dict(dilation=[1, 2]), ValueError, r"dilation must hold one int per head \(H = 3\), got 2 values"),
    "too many per head": (dict(dilation=(1, 2, 3, 4)), ValueError, r"one int per head \(H = 3\), got 4 values"),
    "a zero per head": (dict(dilation=[1, 0, 2]), ValueError, r"dilation must be made of ints >= 1, got 0"),
    "a float per head": (dict(dilation=[1, 2.0, 3]), TypeError, r"dilation must be made of ints >= 1, got float"),
    "a bool per head": (dict(dilation=(1, True, 3)), TypeError, r"dilation must be made of ints >= 1, got bool"),
}


@pytest.mark.parametrize("fn", (sliding_window_attention, dense_attention, loop_attention))
@pytest.mark.parametrize("arguments, error, message", BAD.values(), ids=BAD.keys())
def test_bad_windows_and_dilations_name_the_argument(fn, arguments, error, message):
    q, k, v = (torch.zeros(2, 6, 3, 4, dtype=torch.float64) for _ in range(3))
    with pytest.raises(error, match=message):
        fn(q, k, v, arguments.get("window", 2), dilation=arguments.get("dilation", 1))
