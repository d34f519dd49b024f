"""The edges of the public function: each a regression test for a defect once found.

Overflowing half-precision scores, empty sizes, inputs no attention takes (float8, complex,
sparse, quantized, non-finite scales), gradients through expanded inputs and expanded upstream
gradients, the output's layout, wide windows, NaN inputs, and torch.compile, torch.export and
torch.func.vmap against eager mode.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cases import assert_close64
from swa_tutorial import dense_attention, dense_band_mask, loop_attention, sliding_window_attention
from swa_tutorial.backends import chunked as chunks, dense

HALF = (torch.float16, torch.bfloat16)


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# Half precision: scores beyond the float16 range.


@pytest.mark.parametrize("backend", ("chunks", "dense", "tiles"))
def test_float16_scores_beyond_its_range(backend):
    """q = 100 and k = -100 everywhere: every score is -80000, past float16's -65504. Each query
    averages its window's values equally; the padding key 3 (value 1000) never gets weight."""
    q = torch.full((1, 6, 1, 64), 100.0, dtype=torch.float16)
    k = torch.full((1, 6, 1, 64), -100.0, dtype=torch.float16)
    v = torch.zeros(1, 6, 1, 64, dtype=torch.float16)
    v[0, :, 0, 0] = torch.arange(6.0)
    v[0, 3, 0, 0] = 1000.0
    pad = torch.zeros(1, 6, dtype=torch.bool)
    pad[0, 3] = True
    out = sliding_window_attention(q, k, v, 1, key_padding_mask=pad, backend=backend)
    # query i averages the non-padding tokens among i - 1 .. i + 1
    expected = [sum(t for t in range(max(0, i - 1), min(6, i + 2)) if t != 3) for i in range(6)]
    counts = [sum(1 for t in range(max(0, i - 1), min(6, i + 2)) if t != 3) for i in range(6)]
    assert out[0, :, 0, 0].tolist() == [e / c for e, c in zip(expected, counts)]
    assert out[0, :, 0, 0].tolist() == [0.5, 1.0, 1.5, 3.0, 4.5, 4.5]


@pytest.mark.parametrize("dtype", HALF)
def test_a_large_scale_is_applied_in_float32(dtype):
    """scale * q . k past the half range: q * scale formed in float32, so no infinity appears."""
    q, k, v = (randn(1, 20, 2, 8, seed=s).to(dtype) for s in range(3))
    out = sliding_window_attention(q, k, v, 3, scale=1e5)
    ref = dense_attention(q.double(), k.double(), v.double(), 3, scale=1e5)  # a hard max: one key wins
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() <= 2 * torch.finfo(dtype).eps * v.double().abs().max()


def test_masked_cells_never_get_weight_whatever_the_scores():
    """Valid scores far below any fill value a masked cell could get still win every weight."""
    q = torch.full((1, 10, 1, 4), 1e150, dtype=torch.float64)
    k = -torch.ones(1, 10, 1, 4, dtype=torch.float64)
    v = torch.arange(10.0, dtype=torch.float64).reshape(1, 10, 1, 1)
    pad = torch.zeros(1, 10, dtype=torch.bool)
    pad[0, 5] = True
    for backend in ("chunks", "dense"):
        out = sliding_window_attention(q, k, v, 2, key_padding_mask=pad, scale=1.0, backend=backend)
        assert torch.isfinite(out).all()
        assert out[0, 5, 0, 0] == (3 + 4 + 6 + 7) / 4  # key 5 is padding: the four others share


# Empty sizes behave as in scaled_dot_product_attention.


@pytest.mark.parametrize("shape", [(0, 7, 2, 4), (2, 0, 2, 4), (2, 7, 0, 4)])
def test_empty_batch_length_or_heads(shape):
    q, k = (randn(*shape, seed=s).requires_grad_() for s in range(2))
    v = randn(*shape[:3], 3, seed=2).requires_grad_()
    out = sliding_window_attention(q, k, v, 2)
    assert out.shape == (*shape[:3], 3) and out.dtype == q.dtype
    out.sum().backward()
    assert q.grad.shape == q.shape and v.grad.shape == v.shape


@pytest.mark.parametrize("window", (2, (3, 0)))
def test_head_dim_zero_averages_the_window(window):
    """d = 0: every score is 0 whatever the scale, so each query averages its window's values,
    as scaled_dot_product_attention does."""
    q, k = torch.zeros(2, 9, 3, 0, dtype=torch.float64), torch.zeros(2, 9, 3, 0, dtype=torch.float64)
    v = randn(2, 9, 3, 4)
    out = sliding_window_attention(q, k, v, window)
    assert_close64(out, dense_attention(q, k, v, window, scale=1.0))
    full = sliding_window_attention(q, k, v, 8)
    sdpa = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert_close64(full, sdpa)


def test_value_dim_zero():
    q, k = randn(2, 9, 3, 4), randn(2, 9, 3, 4, seed=1)
    out = sliding_window_attention(q, k, torch.zeros(2, 9, 3, 0, dtype=torch.float64), (1, 1))
    assert out.shape == (2, 9, 3, 0)


# Inputs no attention takes.


def _valid(**changes):
    tensors = {name: randn(2, 6, 3, 4, seed=n) for n, name in enumerate("qkv")}
    tensors.update(changes)
    return tensors["q"], tensors["k"], tensors["v"]


@pytest.mark.parametrize(
    "q, message",
    [
        (torch.zeros(2, 6, 3, 4).to(torch.float8_e4m3fn), r"q must have dtype float64, float32, float16 or bfloat16"),
        (torch.zeros(2, 6, 3, 4, dtype=torch.complex64), r"q must have dtype float64, float32, float16 or bfloat16"),
        (torch.zeros(2, 6, 3, 4).to_sparse(), r"q must be a dense \(strided\) tensor, got layout torch\.sparse_coo"),
        (
            torch.quantize_per_tensor(torch.zeros(2, 6, 3, 4), 0.1, 0, torch.qint8),
            r"q must be a floating-point tensor, got the quantized dtype torch\.qint8",
        ),
    ],
    ids=["float8", "complex", "sparse", "quantized"],
)
@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
@pytest.mark.parametrize("fn", (sliding_window_attention, dense_attention, loop_attention))
def test_tensors_of_other_kinds_get_a_type_error(fn, q, message):
    with pytest.raises(TypeError, match=message):
        fn(*_valid(q=q), 2)


@pytest.mark.parametrize("scale", (float("nan"), float("inf"), -float("inf"), 10**400))
@pytest.mark.parametrize("fn", (sliding_window_attention, dense_attention, loop_attention))
def test_scale_must_be_finite(fn, scale):
    with pytest.raises(ValueError, match="scale must be a finite real number"):
        fn(*_valid(), 2, scale=scale)


def test_key_padding_mask_must_be_dense():
    with pytest.raises(TypeError, match=r"key_padding_mask must be a dense \(strided\) tensor"):
        sliding_window_attention(*_valid(), 2, key_padding_mask=torch.zeros(2, 6, dtype=torch.bool).to_sparse())


@pytest.mark.parametrize("backend, error", [("fast", ValueError), (None, TypeError), ("Chunks", ValueError)])
def test_unknown_backend(backend, error):
    with pytest.raises(error, match="backend must be one of 'auto', "):
        sliding_window_attention(*_valid(), 2, backend=backend)


# Gradients and layout.


def test_output_is_contiguous_in_the_input_layout():
    q, k, v = (randn(2, 30, 3, 8, seed=s).transpose(0, 0) for s in range(3))
    out = sliding_window_attention(q, k, v, (4, 1))
    assert out.is_contiguous() and out.shape == (2, 30, 3, 8)
    assert out.view(2, 30, -1).shape == (2, 30, 24)  # heads concatenated, as a model needs


@pytest.mark.parametrize("backend", ("chunks", "dense", "tiles"))
def test_an_expanded_upstream_gradient_reaches_the_backend_contiguous(backend, monkeypatch):
    """``out.sum().backward()`` sends back a zero-stride tensor: the backend's own backward must
    receive a dense one (a zero-stride operand makes the matrix products of the backward slow)."""
    import swa_tutorial.backends as backends

    seen = []

    def recording(*args):
        out, lse = backends.BACKENDS[backend](*args)
        out.register_hook(lambda g: seen.append(g.is_contiguous() and 0 not in g.stride()))
        return out, lse

    q, k, v = (randn(2, 40, 3, 8, seed=s).requires_grad_() for s in range(3))
    import swa_tutorial.attention as attention

    monkeypatch.setattr(attention, "load", lambda name: recording)
    sliding_window_attention(q, k, v, 4).sum().backward()
    assert seen == [True]


def test_gradient_through_expanded_keys_is_per_batch():
    """k expanded over the batch (zero stride): each batch element's gradient is its own."""
    k0 = randn(1, 24, 2, 4, seed=1).requires_grad_()
    q, v = randn(3, 24, 2, 4), randn(3, 24, 2, 4, seed=2)
    g_out = randn(3, 24, 2, 4, seed=3)

    def grad(fn):
        k = k0.expand(3, -1, -1, -1)
        return torch.autograd.grad((fn(q, k, v, (3, 2)) * g_out).sum(), k0)[0]

    assert_close64(grad(sliding_window_attention), grad(dense_attention))


def test_wide_windows_run_dense_not_padded(monkeypatch):
    """A window that puts the whole sequence in one chunk (2w >= L) is computed as dense
    attention on the L tokens, not padded to 2w rows."""
    calls = []
    real = dense.attend
    monkeypatch.setattr(dense, "attend", lambda *a: calls.append(a[0].shape[1]) or real(*a))
    q, k, v = (randn(1, 50, 2, 4, seed=s) for s in range(3))
    for window in (49, 10**6, (None, None), (60, 2), (25, 25)):
        assert_close64(sliding_window_attention(q, k, v, window, backend="chunks"), dense_attention(q, k, v, window))
    assert calls == [50] * 5
    chunks.attend(q, k, v, (12, 12), None, 0.5)  # 2w = 24 < 50: chunks
    assert calls == [50] * 5


# Non-finite inputs spread; they are never hidden.


@pytest.mark.parametrize("backend", ("chunks", "dense", "tiles"))
def test_nan_in_q_or_k_reaches_exactly_the_rows_that_score_it(backend):
    q, k, v = (randn(1, 30, 1, 4, seed=s) for s in range(3))
    for name, window in (("q", 2), ("k", 2), ("k", (3, 0))):
        x = (q if name == "q" else k).clone()
        x[0, 12, 0, 1] = float("nan")
        args = (x, k, v) if name == "q" else (q, x, v)
        nan_rows = sliding_window_attention(*args, window, backend=backend)[0, :, 0].isnan().any(-1)
        expected = loop_attention(*args, window)[0, :, 0].isnan().any(-1)
        assert torch.equal(nan_rows, expected) and nan_rows.sum() >= 1


# Compilers.


def _problem(L=37):
    q, k, v = (randn(2, L, 3, 8, seed=s, dtype=torch.float32) for s in range(3))
    mask = torch.rand(2, L, generator=torch.Generator().manual_seed(5)) < 0.2
    return q, k, v, mask


@pytest.mark.parametrize("window, L", [(4, 37), ((3, 0), 37), (4, 64)])
def test_torch_compile_fullgraph_matches_eager(window, L):
    """One graph, no break; forward and gradients equal eager mode's. The inductor backend
    generates and runs real code (slow to compile: few small problems). L = 64 with w = 4 needs
    no padding of the sequence: there inductor once read the last block's skew (an as_strided
    view starting inside a padded copy) wrongly, and returned NaN."""
    q, k, v, mask = _problem(L)

    def f(q, k, v, mask):
        return sliding_window_attention(q, k, v, window, key_padding_mask=mask)

    compiled = torch.compile(f, fullgraph=True)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    eager_inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    out, ref = compiled(*inputs, mask), f(*eager_inputs, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for a, b in zip(inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_vmap_with_a_padding_mask_matches_a_loop():
    q, k, v, mask = _problem()
    stacked = [torch.stack([x, x.flip(1)]) for x in (q, k, v, mask)]  # 2 problems

    def f(q, k, v, mask):
        return sliding_window_attention(q, k, v, (2, 5), key_padding_mask=mask)

    out = torch.func.vmap(f)(*stacked)
    for n in range(2):
        torch.testing.assert_close(out[n], f(*(x[n] for x in stacked)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("window, step", [(4, 4), ((3, 0), 2), ((2, 5), 4)])
def test_torch_export_with_a_dynamic_length(window, step):
    """An L declared a multiple of a step (as a model that pads to a multiple of its window
    declares it) exports too; each run equals eager mode. tests/test_export.py exports a free L."""
    from torch.export import Dim, export

    class Attention(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return sliding_window_attention(q, k, v, window, key_padding_mask=mask)

    L = step * Dim("n", min=4, max=512)
    program = export(Attention(), _problem(8 * step), dynamic_shapes=({1: L},) * 4).module()
    for n in (4, 8, 21):
        inputs = _problem(step * n)
        torch.testing.assert_close(program(*inputs), Attention()(*inputs), rtol=0, atol=0)


# Dilations larger than the sequence.


def test_a_dilation_past_the_length_leaves_each_token_alone_at_no_cost(monkeypatch):
    """d >= L: every token alone in its class, for any d (once: a huge d overflowed the index
    arithmetic, and d = 10**6 made 10**6 classes of padding). The backend sees the L tokens."""
    import swa_tutorial.attention as attention
    from swa_tutorial.backends import BACKENDS

    rows = []
    real = BACKENDS["chunks"]
    monkeypatch.setattr(attention, "load", lambda name: lambda *a: rows.append(a[0].shape[:2]) or real(*a))
    q, k, v = (randn(2, 7, 3, 4, seed=s) for s in range(3))
    alone = dense_attention(q, k, v, (0, 0))  # each query attends its own key only
    assert_close64(alone, v)
    for d in (7, 8, 10**6, 10**30, [7, 10**6, 10**30]):
        for fn in (sliding_window_attention, dense_attention, loop_attention):
            assert_close64(fn(q, k, v, (3, None), dilation=d), alone)
    assert rows and all(n * L <= 2 * 7 for n, L in rows)  # at most B x L rows: no empty classes


@pytest.mark.parametrize(
    "window, kwargs",
    [((None, 0), {}), (100, {}), (4, {"backend": "dense"}), (4, {"dilation": 2})],
    ids=["causal", "beyond L", "dense", "dilated"],
)
def test_torch_export_of_dense_and_dilated_paths(window, kwargs, request):
    """Plain causal attention, a window beyond L, the dense backend and a dilation export (the
    last with L declared a multiple of 8 here; tests/test_export.py exports a free L)."""
    from torch.export import Dim, export

    class Attention(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return sliding_window_attention(q, k, v, window, key_padding_mask=mask, **kwargs)

    step = 8 if "dilation" in kwargs else 1
    # L from 2 (from 5 where the window (4, 4) is not clipped), and up to 100 for the window 100
    L = step * Dim("n", min={"dense": 5, "dilated": 4}.get(request.node.callspec.id, 2), max=100)
    program = export(Attention(), _problem(5 * step), dynamic_shapes=({1: L},) * 4).module()
    for n in (5, 7, 13):
        inputs = _problem(step * n)
        torch.testing.assert_close(program(*inputs), Attention()(*inputs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("backend", ("chunks", "dense", "tiles"))
def test_autocast_does_not_lower_the_precision(dtype, backend):
    """Under torch.autocast the float32 products would run in 16 bits: the package turns
    autocast off inside, so its error stays at most 1.5x SDPA's (which keeps its own)."""
    q, k = (randn(2, 96, 2, 64, seed=s).mul(8).to(dtype) for s in range(2))  # score spread ~64
    v = randn(2, 96, 2, 64, seed=2).to(dtype)
    allowed = dense_band_mask(96, 16)
    ref = dense_attention(q.double(), k.double(), v.double(), 16)
    with torch.autocast("cpu", dtype=dtype):
        out = sliding_window_attention(q, k, v, 16, backend=backend)
        sdpa = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=allowed)
    assert (out.double() - ref).abs().max() <= 1.5 * (sdpa.transpose(1, 2).double() - ref).abs().max()


def test_rolling_cache_under_autocast():
    from swa_tutorial import RollingKVCache

    q, k = (randn(1, 40, 2, 64, seed=s).mul(8).bfloat16() for s in range(2))
    v = randn(1, 40, 2, 64, seed=2).bfloat16()
    cache = RollingKVCache(7, batch=1, heads=2, head_dim=64, dtype=torch.bfloat16)
    plain = cache.prefill(q, k, v)
    cache.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(cache.prefill(q, k, v), plain)


def test_a_scale_that_overflows_float32_is_refused_for_float32_inputs():
    q = randn(1, 5, 1, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"scale must be finite in torch\.float32, the dtype it is applied in"):
        sliding_window_attention(q, q, q, 1, scale=1e39)
    q64 = q.double()
    assert torch.isfinite(sliding_window_attention(q64, q64, q64, 1, scale=1e39)).all()  # float64: fine


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_a_nested_tensor_gets_a_type_error():
    nested = torch.nested.nested_tensor([torch.randn(3, 2, 4), torch.randn(5, 2, 4)])
    with pytest.raises(TypeError, match=r"q must be a dense \(strided\) tensor, got a nested tensor"):
        sliding_window_attention(nested, nested, nested, 2)


@pytest.mark.parametrize("window", [(None, 0), (0, None), (4096, 0)])
@pytest.mark.parametrize("L", (33, 34))
def test_windows_reaching_the_whole_sequence_run_dense(monkeypatch, window, L):
    """A side that reaches L - 1 (odd L too) or a band larger than L x L: the dense path."""
    calls = []
    real = dense.attend
    monkeypatch.setattr(dense, "attend", lambda *a: calls.append(1) or real(*a))
    q, k, v = (randn(1, L, 2, 4, seed=s) for s in range(3))
    assert_close64(sliding_window_attention(q, k, v, window, backend="chunks"), dense_attention(q, k, v, window))
    assert calls == [1]
