"""The backend contract, checked for every backend against the float64 dense reference.

Each backend computes (out, lse) for one (left, right) window (see
:mod:`swa_tutorial.backends`). Here each is called directly on random problems: outputs and
log-sum-exps in float64 within 1e-10, gradients through both, the half types against the error
of PyTorch's own ``scaled_dot_product_attention`` on the same rounded inputs, and the layouts
a real caller passes (transposed, expanded).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import assert_close64
from swa_tutorial import dense_attention, sliding_window_attention
from swa_tutorial.backends import BACKENDS, TILES_FROM_CELLS, TRANSFORMABLE, choose, tiles
from swa_tutorial.core.windows import window_mask

# The triton backend runs here under Triton's interpreter, slowly: tests/test_triton_kernel.py
# holds its own version of these checks on smaller problems.
NAMES = sorted(set(BACKENDS) - {"triton"})
# The longest L each backend is drawn at (the dense one is O(L^2) by design).
MAX_LEN = {"chunks": 160, "dense": 80, "tiles": 200, "diagonals": 120}


@st.composite
def problems(draw, max_len: int):
    """A random backend call: B, L, H, d, d_v, a clipped (left, right), padding, scale, seed."""
    L = draw(st.integers(1, max_len))
    side = st.one_of(st.integers(0, 4), st.integers(0, L - 1))
    d = draw(st.sampled_from((1, 2, 3, 16, 64)))
    return dict(
        B=draw(st.integers(1, 3)),
        L=L,
        H=draw(st.integers(1, 3)),
        d=d,
        d_v=draw(st.sampled_from((d, 1, 5))),
        window=(draw(side), draw(side)),
        padding=draw(st.sampled_from(("none", "random", "dense", "empty_row"))),
        scale=draw(st.sampled_from((None, 1.0, 0.3))),
        seed=draw(st.integers(0, 2**31)),
    )


def make(p, dtype=torch.float64, std: float = 1.0):
    """q, k [B, L, H, d], v [B, L, H, d_v] (q times ``std``), the padding mask and the scale."""
    g = torch.Generator().manual_seed(p["seed"])
    B, L, H = p["B"], p["L"], p["H"]
    q, k = (torch.randn(B, L, H, p["d"], generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, L, H, p["d_v"], generator=g, dtype=torch.float64)
    mask = None
    if p["padding"] != "none":
        mask = torch.rand(B, L, generator=g) < (0.3 if p["padding"] == "random" else 0.8)
        if p["padding"] == "empty_row":
            mask[0] = True
    scale = p["d"] ** -0.5 if p["scale"] is None else p["scale"]
    return [x.to(dtype) for x in (q * std, k, v)], mask, scale


def reference(q, k, v, window, mask, scale):
    """float64 out [B, L, H, d_v] and lse [B, L, H] from the dense definition."""
    q, k, v = (x.double() for x in (q, k, v))
    out = dense_attention(q, k, v, window, key_padding_mask=mask, scale=scale)
    allowed = window_mask(q.shape[1], window)[None, None]  # 1 x 1 x L x L
    if mask is not None:
        allowed = allowed & ~mask[:, None, None, :]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    lse = scores.masked_fill(~allowed, float("-inf")).logsumexp(dim=-1).transpose(1, 2)  # B x L x H
    return out, lse


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30)
@given(data=st.data())
def test_float64_out_and_lse_match_the_definition(name, data):
    p = data.draw(problems(MAX_LEN[name]))
    (q, k, v), mask, scale = make(p)
    out, lse = BACKENDS[name](q, k, v, p["window"], mask, scale)
    ref_out, ref_lse = reference(q, k, v, p["window"], mask, scale)
    assert out.shape == v.shape and out.dtype == torch.float64 and out.is_contiguous()
    assert lse.shape == q.shape[:3] and lse.dtype == torch.float64
    assert_close64(out, ref_out)
    no_key = ref_lse == float("-inf")
    assert torch.equal(lse == float("-inf"), no_key)  # exactly the queries with no key
    assert (out[no_key] == 0).all()
    assert_close64(lse[~no_key], ref_lse[~no_key])


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15)
@given(data=st.data())
def test_gradients_through_out_and_lse(name, data):
    p = data.draw(problems(min(MAX_LEN[name], 90)))
    (q, k, v), mask, scale = make(p)
    g = torch.Generator().manual_seed(p["seed"] + 1)
    d_out = torch.randn(*v.shape, generator=g, dtype=torch.float64)
    d_lse = torch.randn(*q.shape[:3], generator=g, dtype=torch.float64)

    def gradients(fn):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        out, lse = fn(*inputs, p["window"], mask, scale)
        lse = lse.masked_fill(lse == float("-inf"), 0.0)  # a query with no key: nothing to differentiate
        return torch.autograd.grad((out * d_out).sum() + (lse * d_lse).sum(), inputs)

    for fast, exact in zip(gradients(BACKENDS[name]), gradients(reference)):
        assert torch.isfinite(fast).all()
        assert_close64(fast, exact, tol=1e-10 * max(1.0, exact.abs().max().item()))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("window", [(0, 0), (2, 0), (0, 3), (1, 2)])
def test_gradcheck(name, window):
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, 9, 2, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 5:] = True
    mask[1, 2] = True

    def both(q, k, v):
        out, lse = BACKENDS[name](q, k, v, window, mask, 0.7)
        return out, lse.masked_fill(lse == float("-inf"), 0.0)  # queries with no key: constant

    assert torch.autograd.gradcheck(both, (q, k, v))


@pytest.mark.parametrize("name", NAMES)
def test_second_derivatives(name):
    """gradgradcheck: a gradient penalty or a Hessian-vector product differentiates the backward,
    whichever backend "auto" picked for the length (once the tiles' backward was not)."""
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 7, 1, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[False, False, True, False, False, True, True]])  # the last query sees no key

    def both(q, k, v):
        out, lse = BACKENDS[name](q, k, v, (1, 2), mask, 0.7)
        return out, lse.masked_fill(lse == float("-inf"), 0.0)

    assert torch.autograd.gradgradcheck(both, (q, k, v), fast_mode=True)


def sdpa_error(q, k, v, window, mask, scale, ref):
    """PyTorch SDPA's max error on these (rounded) inputs, over the queries that have a key."""
    allowed = window_mask(q.shape[1], window)[None, None]
    if mask is not None:
        allowed = allowed & ~mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v)), attn_mask=allowed, scale=scale
    ).transpose(1, 2)
    sees = allowed.any(-1).transpose(1, 2)[..., None]  # B x L x 1 x 1 (SDPA gives NaN without a key)
    return ((out.double() - ref).abs() * sees).nan_to_num(0.0).max().item()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("std", (1.0, 4.0, 16.0))
@pytest.mark.parametrize("padding", ("none", "random"))
def test_half_precision_no_worse_than_sdpa(name, dtype, std, padding):
    """float16/bfloat16: the max error against float64 (on the same rounded inputs) at most 1.5x
    that of ``scaled_dot_product_attention``, for score spreads of 1, 4 and 16."""
    p = dict(B=2, L=128, H=2, d=64, d_v=64, window=(16, 16), padding=padding, scale=None, seed=int(std) * 7)
    if name == "dense":
        p["window"] = (5, 20)
    (q, k, v), mask, scale = make(p, dtype, std)
    ref, _ = reference(q, k, v, p["window"], mask, scale)
    out, lse = BACKENDS[name](q, k, v, p["window"], mask, scale)
    assert out.dtype == lse.dtype == torch.float32
    ours = (out.to(dtype).double() - ref).abs().max().item()  # rounded as the entry point rounds
    assert ours <= 1.5 * sdpa_error(q, k, v, p["window"], mask, scale, ref)


@pytest.mark.parametrize("name", NAMES)
def test_any_input_layout(name):
    """Transposed views and zero-stride expanded views give the dense result, and gradients
    through an expanded k are the per-batch gradients dense attention gives."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64).transpose(1, 2)  # B x L x H x d, strided
    k0 = torch.randn(1, 40, 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 40, 3, 5, generator=g, dtype=torch.float64)
    window, mask = (3, 1), torch.rand(2, 40, generator=g) < 0.2

    def grads(fn):
        k = k0.expand(2, -1, -1, -1)  # zero stride over the batch
        out, _ = fn(q, k, v, window, mask, 0.5)
        d_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        return out, torch.autograd.grad((out * d_out).sum(), k)[0]

    (out, gk), (ref, ref_gk) = grads(BACKENDS[name]), grads(reference)
    assert_close64(out, ref)
    assert_close64(gk, ref_gk)
    assert not torch.allclose(gk[0], gk[1])  # really per batch element, not averaged


def test_auto_takes_the_tiles_on_a_cpu_from_the_measured_size_on():
    """The rule of ``choose``: on a CPU, tiles once one head's tiles score L (b + left + right) >=
    TILES_FROM_CELLS cells, chunks below; elsewhere chunks (the only path timed on a GPU)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    b = tiles.TILE_ROWS
    for L, window in [(1024, (32, 32)), (4096, (32, 32)), (1024, (256, 256)), (8, (2, 2)), (300, (1000, 0))]:
        cells = L * (b + sum(window))
        assert choose(cpu, L, window) == ("tiles" if cells >= TILES_FROM_CELLS else "chunks")
        assert choose(cuda, L, window) == "chunks"
    assert choose(cpu, 1024, (32, 32)) == "chunks" and choose(cpu, 4096, (32, 32)) == "tiles"


def test_auto_under_a_transform_of_k_v_or_the_mask_alone():
    """At a length where auto takes the tiles, torch.func transforms that wrap only the values
    (vmap), only the mask (vmap) or only the keys (grad, q captured) match eager mode (they once
    reached the tiles' autograd Function, which functorch cannot run, because only q was asked
    whether it was wrapped)."""
    L, window = 500, 400  # tiles in eager mode
    assert choose(torch.device("cpu"), L, (window, window)) == "tiles"
    g = torch.Generator().manual_seed(9)
    q, k = (torch.randn(1, L, 1, 4, generator=g) for _ in range(2))
    values = torch.randn(2, 1, L, 1, 4, generator=g)
    masks = torch.rand(2, 1, L, generator=g) < 0.3

    def attention(k, v, mask=None):
        return sliding_window_attention(q, k, v, window, key_padding_mask=mask)

    loop = torch.stack([attention(k, v) for v in values])
    torch.testing.assert_close(torch.func.vmap(lambda v: attention(k, v))(values), loop)
    loop = torch.stack([attention(k, values[0], m) for m in masks])
    torch.testing.assert_close(torch.func.vmap(lambda m: attention(k, values[0], m))(masks), loop)
    k_leaf = k.clone().requires_grad_()
    eager = torch.autograd.grad(attention(k_leaf, values[0]).square().sum(), k_leaf)[0]
    torch.testing.assert_close(torch.func.grad(lambda k: attention(k, values[0]).square().sum())(k), eager)


@pytest.mark.parametrize("L, window, expected", [(64, 3, "chunks"), (4096, 40, "tiles"), (500, 400, "tiles")])
def test_auto_runs_the_backend_it_chooses(monkeypatch, L, window, expected):
    """backend="auto" calls the chosen backend once, with the clipped window, and returns its result."""
    calls = []
    for name in ("chunks", "tiles"):
        real = BACKENDS[name]
        monkeypatch.setitem(BACKENDS, name, lambda *a, name=name, real=real: calls.append((name, a[3])) or real(*a))
    q, k, v = (torch.randn(1, L, 1, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))
    out = sliding_window_attention(q, k, v, window)
    side = min(window, L - 1)
    assert calls == [(expected, (side, side))]
    torch.testing.assert_close(out, sliding_window_attention(q, k, v, window, backend=expected))


@pytest.mark.parametrize("name", sorted(set(BACKENDS) - set(TRANSFORMABLE)))
def test_a_backend_without_a_vmap_rule_says_so_under_a_transform(name):
    """A custom autograd function without a vmap rule: the message names the backends that work."""
    q, k = (torch.randn(1, 40, 1, 4, generator=torch.Generator().manual_seed(s)) for s in range(2))
    values = torch.randn(3, 1, 40, 1, 4)  # three problems, vmapped over v alone
    with pytest.raises(RuntimeError, match=f"backend='{name}' does not run under torch.func"):
        torch.func.vmap(lambda v: sliding_window_attention(q, k, v, 3, backend=name))(values)
