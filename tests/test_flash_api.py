"""``flash_attn_func`` and ``flash_attn_varlen_func`` against FlashAttention 2's documented rules.

The reference below is written from the docstrings of Dao-AILab/flash-attention's
``flash_attn/flash_attn_interface.py``, not from this package: query i sits at key position
i + Lk - Lq; with ``window_size=(left, right)`` it attends keys i + Lk - Lq - left ..
i + Lk - Lq + right (-1: no limit on that side); ``causal`` adds j <= i + Lk - Lq; query head h
reads key/value head h // (H / H_kv); "If the row of the mask is all zero, the output will be
zero"; ``softcap`` c turns a score s into c tanh(s / c); softmax_lse is "the logsumexp of each row
of the matrix QK^T * scaling", [B, H, Lq] (varlen [H, total_q]). It runs in float64.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

import swa_tutorial
from cases import assert_dropped_and_rescaled
from swa_tutorial import flash_attn_func, flash_attn_varlen_func

H = 4


def reference(q, k, v, *, causal=False, window_size=(-1, -1), softcap=0.0, scale=None, sinks=None):
    """FlashAttention's attention in float64 by index arithmetic: (out [B, Lq, H, d_v], lse [B, H, Lq])."""
    q, k, v = (x.double() for x in (q, k, v))
    B, Lq, heads, d = q.shape
    Lk, kv_heads = k.shape[1], k.shape[2]
    group = heads // kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)  # head h reads kv head h // group
    scale = 1 / math.sqrt(d) if scale is None else scale
    s = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    at = torch.arange(Lq)[:, None] + Lk - Lq  # the key position of query i
    j = torch.arange(Lk)[None, :]
    left, right = window_size
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if left != -1:
        allowed &= j >= at - left
    if right != -1:
        allowed &= j <= at + right
    if causal:
        allowed &= j <= at
    s = s.masked_fill(~allowed, -math.inf)
    if sinks is not None:
        s = torch.cat([s, sinks.double()[None, :, None, None].expand(B, heads, Lq, 1)], dim=-1)
    lse = torch.logsumexp(s, dim=-1)  # -inf for a row with no key
    p = torch.where(torch.isinf(lse)[..., None], 0.0, torch.exp(s - lse[..., None]))
    out = torch.einsum("bhij,bjhd->bihd", p[..., :Lk], v)
    return out, lse


def qkv(Lq, Lk, kv_heads, *, d=8, B=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, H, d, generator=g, dtype=dtype)
    k = torch.randn(B, Lk, kv_heads, d, generator=g, dtype=dtype)
    v = torch.randn(B, Lk, kv_heads, d, generator=g, dtype=dtype)
    return q, k, v


LK = 13
WINDOWS = [(-1, -1), (3, 0), (2, 5), (0, 0), (-1, 2), (4, -1), (20, 20)]


@pytest.mark.parametrize("kv_heads", [1, 2, H])
@pytest.mark.parametrize("Lq", [1, LK // 3, LK, LK + 5])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window_size", WINDOWS)
def test_against_flash_attentions_rules(kv_heads, Lq, causal, window_size):
    q, k, v = qkv(Lq, LK, kv_heads)
    out, lse, probs = flash_attn_func(q, k, v, causal=causal, window_size=window_size, return_attn_probs=True)
    expected, expected_lse = reference(q, k, v, causal=causal, window_size=window_size)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert lse.shape == (2, H, Lq)  # FlashAttention's layout [B, H, Lq]
    torch.testing.assert_close(lse, expected_lse, rtol=1e-10, atol=1e-10)
    assert probs is None


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("Lq, causal, window_size", [(LK, True, (3, 0)), (LK // 3, False, (2, 5)), (1, True, (-1, -1)),
                                                     (LK + 5, True, (4, -1))])
def test_gradients_against_the_reference(kv_heads, Lq, causal, window_size):
    q, k, v = (x.requires_grad_() for x in qkv(Lq, LK, kv_heads, seed=1))
    sinks = torch.randn(H, dtype=torch.float64, requires_grad=True)
    kwargs = dict(causal=causal, window_size=window_size, softcap=4.0, softmax_scale=0.3)
    out = flash_attn_func(q, k, v, **kwargs, sinks=sinks)
    expected, _ = reference(q, k, v, causal=causal, window_size=window_size, softcap=4.0, scale=0.3, sinks=sinks)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, sinks), grad)
    want = torch.autograd.grad(expected, (q, k, v, sinks), grad)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    for name, a, b in zip("q k v sinks".split(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("softcap", [0.0, 0.5, 5.0])
@pytest.mark.parametrize("with_sinks", [False, True])
def test_softcap_scale_and_sinks(softcap, with_sinks):
    q, k, v = qkv(LK, LK, 2, seed=2)
    q = q * 4  # scores large enough for the cap to matter
    sinks = torch.linspace(-2, 3, H, dtype=torch.float64) if with_sinks else None
    out, lse, _ = flash_attn_func(q, k, v, softmax_scale=0.7, causal=True, window_size=(5, -1), softcap=softcap,
                                  return_attn_probs=True, sinks=sinks)
    expected, expected_lse = reference(q, k, v, causal=True, window_size=(5, -1), softcap=softcap, scale=0.7,
                                       sinks=sinks)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, expected_lse, rtol=1e-10, atol=1e-10)


def test_float32_and_bfloat16_run_with_the_dtype_of_q():
    q, k, v = qkv(LK, LK, 2, seed=3)
    expected, _ = reference(q, k, v, causal=True, window_size=(4, 0))
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        out = flash_attn_func(*(x.to(dtype) for x in (q, k, v)), causal=True, window_size=(4, 0))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def documents(lengths_q, lengths_k, kv_heads, seed):
    """Packed q [total_q, H, d], k, v [total_k, H_kv, d] and int32 cu_seqlens of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lengths_q), H, 8, generator=g, dtype=torch.float64)
    k = torch.randn(sum(lengths_k), kv_heads, 8, generator=g, dtype=torch.float64)
    v = torch.randn(sum(lengths_k), kv_heads, 8, generator=g, dtype=torch.float64)
    cu = [torch.tensor([0, *lengths], dtype=torch.int64).cumsum(0).to(torch.int32) for lengths in (lengths_q, lengths_k)]
    return q, k, v, cu[0], cu[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("causal, window_size", [(True, (3, 0)), (False, (2, 4)), (True, (-1, -1)), (False, (-1, -1))])
def test_varlen_documents_attend_only_themselves(seed, causal, window_size):
    g = torch.Generator().manual_seed(100 + seed)
    n = int(torch.randint(1, 6, (1,), generator=g))
    lengths_k = torch.randint(1, 12, (n,), generator=g).tolist()
    lengths_k[0] = 1  # a one-token document, every time
    same = seed % 2 == 0  # half the cases: as many queries as keys; else fewer or more, per document
    lengths_q = lengths_k if same else [max(1, L + int(torch.randint(-4, 3, (1,), generator=g))) for L in lengths_k]
    kv_heads = (1, 2, H)[seed % 3]
    q, k, v, cu_q, cu_k = documents(lengths_q, lengths_k, kv_heads, seed)
    sinks = torch.randn(H, dtype=torch.float64, generator=g) if seed % 3 == 1 else None
    out, lse, probs = flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max(lengths_q), max(lengths_k), causal=causal, window_size=window_size, softcap=3.0,
        return_attn_probs=True, sinks=sinks,
    )
    assert out.shape == (sum(lengths_q), H, 8) and lse.shape == (H, sum(lengths_q)) and probs is None
    for i in range(n):
        rows_q, rows_k = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        expected, expected_lse = reference(q[None, rows_q], k[None, rows_k], v[None, rows_k], causal=causal,
                                           window_size=window_size, softcap=3.0, sinks=sinks)
        torch.testing.assert_close(out[rows_q], expected[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(lse[:, rows_q], expected_lse[0], rtol=1e-10, atol=1e-10)


def test_varlen_gradients_stay_within_their_document():
    q, k, v, cu_q, cu_k = documents([1, 6, 4], [1, 6, 4], 2, seed=7)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 6, 6, causal=True, window_size=(2, 0))
    out[1:7].sum().backward()  # the second document only
    for x in (q, k, v):
        assert x.grad[0].abs().max() == 0 and x.grad[7:].abs().max() == 0 and x.grad[1:7].abs().max() > 0


def test_dropout_is_reproducible_and_zero_means_none():
    q, k, v = qkv(LK, LK, 2, seed=4)
    torch.manual_seed(0)
    first = flash_attn_func(q, k, v, dropout_p=0.3, causal=True)
    torch.manual_seed(0)
    again = flash_attn_func(q, k, v, dropout_p=0.3, causal=True)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, flash_attn_func(q, k, v, causal=True))
    torch.testing.assert_close(flash_attn_func(q, k, v, dropout_p=0.0, causal=True), reference(q, k, v, causal=True)[0])


def test_dropout_keeps_a_fraction_one_minus_p_scaled_up():
    """One-hot values make the output row the dropped, rescaled probabilities themselves."""
    L, p = 64, 0.25
    g = torch.Generator().manual_seed(5)
    q = torch.randn(4, L, H, 8, generator=g, dtype=torch.float64)
    k = torch.randn(4, L, H, 8, generator=g, dtype=torch.float64)
    v = torch.eye(L, dtype=torch.float64)[None, :, None, :].expand(4, L, H, L)
    torch.manual_seed(1)
    dropped = flash_attn_func(q, k, v, dropout_p=p, window_size=(7, 7))  # [B, L, H, L]: P_ij kept / (1 - p)
    probs = flash_attn_func(q, k, v, window_size=(7, 7))
    assert_dropped_and_rescaled(dropped, probs, p, tolerance=0.02)  # 14464 draws: 0.02 is 5.5 standard deviations


def test_signatures_are_flash_attentions():
    """The positional order and defaults of FlashAttention 2.x's two functions (plus the keyword-only sinks)."""
    common = dict(dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                  alibi_slopes=None, deterministic=False, return_attn_probs=False)
    expected = {
        flash_attn_func: [("q",), ("k",), ("v",), *common.items()],
        flash_attn_varlen_func: [("q",), ("k",), ("v",), ("cu_seqlens_q",), ("cu_seqlens_k",), ("max_seqlen_q",),
                                 ("max_seqlen_k",), *common.items(), ("block_table", None)],
    }
    for fn, params in expected.items():
        got = [(p.name,) if p.default is inspect.Parameter.empty else (p.name, p.default)
               for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert got == [tuple(x) for x in params]
        assert inspect.signature(fn).parameters["sinks"].kind is inspect.Parameter.KEYWORD_ONLY
    assert swa_tutorial.flash_attn_func is flash_attn_func and swa_tutorial.flash_attn_varlen_func is flash_attn_varlen_func


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(alibi_slopes=torch.ones(H)), ValueError, "alibi_slopes"),
        (dict(window_size=(-2, 0)), ValueError, "window_size[0]"),
        (dict(window_size=(3,)), ValueError, "window_size"),
        (dict(deterministic=1), TypeError, "deterministic"),
        (dict(return_attn_probs="yes"), TypeError, "return_attn_probs"),
        (dict(causal=1), TypeError, "causal"),
        (dict(dropout_p=1.0), ValueError, "dropout_p must be a probability in [0, 1)"),
        (dict(dropout_p=-0.1), ValueError, "dropout_p must be"),
        (dict(dropout_p="0.1"), TypeError, "dropout_p must be"),
        (dict(softmax_scale=float("inf")), ValueError, "softmax_scale must be a finite"),
        (dict(softmax_scale=1e39), ValueError, "softmax_scale must be finite in torch.float32"),
        (dict(softmax_scale="1"), TypeError, "softmax_scale must be a real number"),
        (dict(softcap=-1.0), ValueError, "softcap must be"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, words):
    """Each by its name in FlashAttention's call (dropout_p and softmax_scale, not the entry
    point's dropout and scale), in both functions; float32 inputs, whose scale must fit float32."""
    q, k, v = qkv(4, 4, 2, dtype=torch.float32)
    match = re.escape(words)
    with pytest.raises(error, match=match):
        flash_attn_func(q, k, v, **kwargs)
    *qkv_packed, cu_q, cu_k = documents([3, 2], [3, 2], 2, seed=8)
    q, k, v = (x.float() for x in qkv_packed)
    with pytest.raises(error, match=match):
        flash_attn_varlen_func(q, k, v, cu_q, cu_k, 3, 3, **kwargs)


def test_varlen_refuses_a_block_table_and_checks_cu_seqlens():
    q, k, v, cu_q, cu_k = documents([3, 2], [3, 2], 2, seed=8)
    with pytest.raises(ValueError, match="block_table"):
        flash_attn_varlen_func(q, k, v, cu_q, cu_k, 3, 3, block_table=torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises((TypeError, ValueError), match="cu_seqlens_q"):
        flash_attn_varlen_func(q, k, v, cu_q.long(), cu_k, 3, 3)
    with pytest.raises(ValueError, match="max_seqlen_k"):
        flash_attn_varlen_func(q, k, v, cu_q, cu_k, 3, 2)
