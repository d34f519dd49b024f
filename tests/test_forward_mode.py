"""Forward-mode derivatives: torch.func.jvp, jacfwd and hessian through sliding_window_attention.

The package's own autograd functions (the output cast, the masked softmax, the tiles) carry a
``jvp``; everything else is plain tensor code. Each derivative is checked in float64 on small
problems against two independent answers: central finite differences, and the same transform of
the float64 dense reference (:func:`swa_tutorial.dense_attention`, plain tensor code throughout).
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import hessian, jacfwd, jacrev, jvp

import swa_tutorial.backends
from swa_tutorial import dense_attention, sliding_window_attention
from swa_tutorial.backends import dense, tiles

# (L, window, dilation, padding): the dense path (L <= 2w), the chunks (L > 2w, not a multiple of
# w), asymmetric and causal windows, an unbounded side, per-head dilation, padding with a row
# that sees no key
CASES = [
    (5, 3, 1, False),
    (13, 2, 1, False),
    (14, (3, 1), 1, True),
    (11, (2, 0), 1, False),
    (9, (None, 0), 1, True),
    (10, (0, None), 1, False),
    (12, (2, 1), (1, 2), True),
]


def _problem(L, seed, heads=2, d=3, d_v=2):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, L, heads, d, generator=gen, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, L, heads, d_v, generator=gen, dtype=torch.float64)
    return q, k, v, tuple(torch.randn_like(x) for x in (q, k, v))


def _padding(L):
    mask = torch.zeros(2, L, dtype=torch.bool)
    mask[0, 1::3] = True
    mask[1, : L // 2 + 2] = True  # a run of padding: some queries see no key at all
    return mask


def _attention(window, dilation, padding, **kwargs):
    def swa(q, k, v):
        return sliding_window_attention(q, k, v, window, key_padding_mask=padding, dilation=dilation, **kwargs)

    def reference(q, k, v):
        return dense_attention(q, k, v, window, key_padding_mask=padding, dilation=dilation)

    return swa, reference


def _finite_difference(f, inputs, tangents, eps=1e-6):
    ahead = f(*(x + eps * t for x, t in zip(inputs, tangents)))
    behind = f(*(x - eps * t for x, t in zip(inputs, tangents)))
    return (ahead - behind) / (2 * eps)


@pytest.mark.parametrize("backend", ["auto", "chunks", "dense", "diagonals"])
@pytest.mark.parametrize("L, window, dilation, padded", CASES)
def test_jvp_equals_finite_differences_and_the_reference(L, window, dilation, padded, backend):
    q, k, v, tangents = _problem(L, seed=L)
    swa, reference = _attention(window, dilation, _padding(L) if padded else None, backend=backend)
    out, tangent = jvp(swa, (q, k, v), tangents)
    expected_out, expected = jvp(reference, (q, k, v), tangents)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(tangent, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(tangent, _finite_difference(swa, (q, k, v), tangents), rtol=0, atol=1e-7)


@pytest.mark.parametrize("L, window, dilation, padded", [CASES[1], CASES[2], CASES[6]])
def test_dual_tensors_give_the_same_tangent(L, window, dilation, padded):
    """torch.autograd.forward_ad, no torch.func: the functions' jvp rules run on dual tensors."""
    q, k, v, tangents = _problem(L, seed=L + 1)
    swa, reference = _attention(window, dilation, _padding(L) if padded else None)
    with fwAD.dual_level():
        dual = [fwAD.make_dual(x, t) for x, t in zip((q, k, v), tangents)]
        tangent = fwAD.unpack_dual(swa(*dual)).tangent
    torch.testing.assert_close(tangent, jvp(reference, (q, k, v), tangents)[1], rtol=0, atol=1e-12)


def test_jacfwd_equals_jacrev_and_the_reference():
    q, k, v, _ = _problem(11, seed=3, heads=1, d=2, d_v=2)
    swa, reference = _attention((2, 1), 1, _padding(11))
    forward = jacfwd(swa, argnums=(0, 1, 2))(q, k, v)
    for got, backward, expected in zip(forward, jacrev(swa, argnums=(0, 1, 2))(q, k, v),
                                       jacfwd(reference, argnums=(0, 1, 2))(q, k, v)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(got, backward, rtol=0, atol=1e-12)


@pytest.mark.parametrize("argnum", [0, 1, 2])
def test_hessian_equals_the_reference(argnum):
    """hessian = jacfwd(jacrev): forward mode through the backward of every function."""
    q, k, v, _ = _problem(9, seed=4, heads=1, d=2, d_v=2)
    weight = torch.randn(1, 9, 1, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    swa, reference = _attention((2, 1), 1, None)

    def loss(f):
        return lambda q, k, v: (f(q, k, v) * weight).sum() + f(q, k, v).square().sum()

    got = hessian(loss(swa), argnums=argnum)(q, k, v)
    torch.testing.assert_close(got, hessian(loss(reference), argnums=argnum)(q, k, v), rtol=0, atol=1e-11)
    assert got.abs().max() > 0.1  # a real second derivative, not zeros on both sides


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_tangent_has_the_output_dtype(dtype):
    q, k, v = (x.to(dtype) for x in _problem(13, seed=6)[:3])
    tangents = tuple(torch.ones_like(x) for x in (q, k, v))
    out, tangent = jvp(lambda q, k, v: sliding_window_attention(q, k, v, 2), (q, k, v), tangents)
    assert out.dtype == tangent.dtype == dtype
    expected = jvp(lambda q, k, v: dense_attention(q, k, v, 2), tuple(x.double() for x in (q, k, v)),
                   tuple(t.double() for t in tangents))[1]
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(tangent.double(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("softcap", [0.0, 2.0])
@pytest.mark.parametrize("L, window, dilation, padded", [CASES[2], CASES[3], CASES[4], (12, (2, 1), 2, True)])
def test_dual_tensors_through_the_tiles(monkeypatch, L, window, dilation, padded, softcap):
    """Dual tensors reach the tiles' autograd function, by name and where auto picks the tiles
    (from 2^18 cells; here the threshold at 0): its jvp, tile by tile, against the reference's
    and finite differences. Grouped heads: 4 query heads, 2 key/value heads. Then the backend
    itself with tiles of 3 rows in groups of 2, out and lse against the dense backend's."""
    monkeypatch.setattr(swa_tutorial.backends, "TILES_FROM_CELLS", 0)
    gen = torch.Generator().manual_seed(L)
    q = torch.randn(2, L, 4, 3, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, L, 2, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    tangents = [torch.randn_like(x) for x in (q, k, v)]
    padding = _padding(L) if padded else None
    kwargs = dict(key_padding_mask=padding, dilation=dilation, softcap=softcap)
    expected = jvp(lambda q, k, v: dense_attention(q, k, v, window, **kwargs), (q, k, v), tuple(tangents))[1]
    for backend in ("tiles", "auto"):
        def swa(q, k, v):
            return sliding_window_attention(q, k, v, window, backend=backend, **kwargs)

        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(swa(*(fwAD.make_dual(x, t) for x, t in zip((q, k, v), tangents)))).tangent
        torch.testing.assert_close(tangent, expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(tangent, _finite_difference(swa, (q, k, v), tangents), rtol=0, atol=1e-7)
    if dilation != 1:
        return
    window = tuple(L - 1 if side is None else min(side, L - 1) for side in window)  # clipped, as the entry point does
    tiny = dict(tile_rows=3, group_cells=2 * 3 * (3 + sum(window)))
    with fwAD.dual_level():
        duals = [fwAD.make_dual(x, t) for x, t in zip((q, k, v), tangents)]
        got = [fwAD.unpack_dual(x).tangent for x in tiles.attend(*duals, window, padding, 0.7, softcap, **tiny)]
        want = [fwAD.unpack_dual(x).tangent for x in dense.attend(*duals, window, padding, 0.7, softcap)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.nan_to_num(posinf=0.0, neginf=0.0), b.nan_to_num(posinf=0.0, neginf=0.0),
                                   rtol=0, atol=1e-12)
