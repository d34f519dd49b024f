"""Second derivatives through sliding_window_attention, backend by backend, against the reference.

A gradient penalty differentiates the first gradients (``create_graph=True``), a Hessian-vector
product likewise: the backward itself must be differentiable, or a term is silently lost. Each
backend on the CPU (and "auto" at lengths where it picks the chunks and where it picks the
tiles) is compared in float64 with the same derivatives of the dense reference
(:func:`swa_tutorial.dense_attention`, plain tensor code), and checked against finite
differences (``gradgradcheck``). The sequence-parallel exchange has its own such test
(tests/test_sequence_parallel_derivatives.py).
"""

from __future__ import annotations

import pytest
import torch

import swa_tutorial.backends
from swa_tutorial import dense_attention, sliding_window_attention

WINDOWS = [(2, 1), ((3, 0), 1), ((1, 2), (1, 2)), ((None, 1), 1)]  # (window, dilation)
BACKENDS = ["auto", "auto-tiles", "chunks", "dense", "tiles", "diagonals"]


@pytest.fixture
def backend(request, monkeypatch):
    """The backend= to pass; "auto-tiles" is "auto" with the tiles' threshold at 0 cells, so auto
    picks the tiles at these small lengths as it does from 2^18 cells on."""
    if request.param == "auto-tiles":
        monkeypatch.setattr(swa_tutorial.backends, "TILES_FROM_CELLS", 0)
        assert swa_tutorial.backends.choose(torch.device("cpu"), 2, (0, 0)) == "tiles"
        return "auto"
    return request.param


def _problem(L, seed, heads=2):
    gen = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(2, L, heads, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    weights = [torch.randn(2, L, heads, 3, generator=gen, dtype=torch.float64) for _ in range(3)]
    padding = torch.zeros(2, L, dtype=torch.bool)
    padding[0, 2::4] = True
    padding[1, : L // 2 + 2] = True  # a run of padding: some queries see no key at all
    return (q, k, v), grad, weights, padding


def _penalty_gradients(attention, inputs, grad, weights):
    """The first gradients of <attention(q, k, v), grad> (with their graph), then the gradients
    of a penalty on them, linear (a Hessian-vector product) and quadratic."""
    inputs = [x.clone().requires_grad_() for x in inputs]
    first = torch.autograd.grad(attention(*inputs), inputs, grad, create_graph=True)
    penalty = sum((g * u).sum() + g.square().sum() for g, u in zip(first, weights))
    return [g.detach() for g in first] + list(torch.autograd.grad(penalty, inputs))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("L", [7, 19])
@pytest.mark.parametrize("window, dilation", WINDOWS)
def test_second_derivatives_equal_the_reference(backend, L, window, dilation):
    inputs, grad, weights, padding = _problem(L, seed=L)
    kwargs = dict(key_padding_mask=padding, dilation=dilation)
    got = _penalty_gradients(lambda q, k, v: sliding_window_attention(q, k, v, window, backend=backend, **kwargs),
                             inputs, grad, weights)
    expected = _penalty_gradients(lambda q, k, v: dense_attention(q, k, v, window, **kwargs), inputs, grad, weights)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    assert min(float(b.abs().max()) for b in expected) > 0.1  # every term is really there


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_gradgradcheck_through_the_entry_point(backend):
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 9, 1, 2, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    padding = torch.zeros(1, 9, dtype=torch.bool)
    padding[0, 4] = True

    def attention(q, k, v):
        return sliding_window_attention(q, k, v, (2, 1), key_padding_mask=padding, backend=backend)

    assert torch.autograd.gradgradcheck(attention, (q, k, v))
