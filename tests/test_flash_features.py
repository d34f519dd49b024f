"""FlashAttention's features in the entry point, on every backend, against the float64 reference.

Grouped heads (H_kv in 1, 2, H), queries aligned to the end of the keys (L_q in 1, L_k // 3,
L_k, L_k + 5), the softcap, attention sinks, packed sequences (random document lengths, length 1
and 0 included), with every window form, dilation and key padding: ``sliding_window_attention``
is compared with ``dense_attention``, the specification written from the definitions, on
outputs, log-sum-exps and the gradients of q, k, v and the sinks. float32 against float64, and
float16/bfloat16 within the package's bound. The tiles also with tiles of a few rows (many tiles
and groups), the Triton kernel on fixed problems under Triton's interpreter. Dropout: the kept
fraction, the scaling of the kept weights, the same seed giving the same output, and p = 0 exact.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from cases import assert_close64
from hypothesis import given, settings
from hypothesis import strategies as st

from swa_tutorial import backends, dense_attention, sliding_window_attention
from swa_tutorial.backends import tiles
from swa_tutorial.reference import allowed_keys

BACKENDS = ("dense", "chunks", "tiles", "diagonals")
INF = float("-inf")


@dataclass(frozen=True)
class Problem:
    """One call: shapes, window, dilation, padding, softcap, sinks; tensors from its own seed.
    ``q_lengths``/``k_lengths`` set: packed documents (then batch and the lengths above unused)."""

    batch: int
    q_len: int
    k_len: int
    heads: int
    kv_heads: int
    head_dim: int
    value_dim: int
    window: object
    dilation: object
    padding: str  # "none", "random" or "empty_row" (batch row 0 all padding)
    softcap: float
    sinks: bool
    scale: float | None
    seed: int
    q_lengths: tuple = ()
    k_lengths: tuple = ()

    def tensors(self, dtype=torch.float64):
        """q, k, v (standard normal, rounded to dtype) and the keyword arguments of the call."""
        g = torch.Generator().manual_seed(self.seed)
        H, H_kv, d = self.heads, self.kv_heads, self.head_dim
        lead_q, lead_k = ((sum(self.q_lengths),), (sum(self.k_lengths),)) if self.q_lengths else (
            (self.batch, self.q_len), (self.batch, self.k_len))
        q = torch.randn(*lead_q, H, d, generator=g, dtype=torch.float64)
        k = torch.randn(*lead_k, H_kv, d, generator=g, dtype=torch.float64)
        v = torch.randn(*lead_k, H_kv, self.value_dim, generator=g, dtype=torch.float64)
        kwargs = dict(scale=self.scale, dilation=self.dilation, softcap=self.softcap)
        if self.sinks:
            kwargs["sinks"] = torch.randn(H, generator=g, dtype=torch.float64).to(dtype)
        if self.q_lengths:
            for name, lengths in (("cu_seqlens_q", self.q_lengths), ("cu_seqlens_k", self.k_lengths)):
                kwargs[name] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        elif self.padding != "none":
            mask = torch.rand(self.batch, self.k_len, generator=g) < 0.3
            if self.padding == "empty_row":
                mask[0] = True
            kwargs["key_padding_mask"] = mask
        return q.to(dtype), k.to(dtype), v.to(dtype), kwargs


def windows(L: int):
    """Every window form: an int, a pair (also beyond L), causal (None, 0), the token alone (0, 0),
    no limit on the right (left, None) or on either side (None, None)."""
    side = st.one_of(st.integers(0, 5), st.integers(0, L + 6))
    return st.one_of(st.integers(1, 6), st.tuples(side, side), st.just((None, 0)), st.just((0, 0)), st.tuples(side, st.just(0)),
                     st.tuples(side, st.just(None)), st.just((None, None)))


@st.composite
def problems(draw, max_len: int = 48, packed: bool = False):
    H = draw(st.sampled_from((2, 4)))
    d = draw(st.sampled_from((1, 3, 8)))
    k_len = draw(st.integers(1, max_len))
    q_lengths = k_lengths = ()
    if packed:
        k_lengths = tuple(draw(st.lists(st.sampled_from((0, 1, 1, 2, 5, 9, 17)), min_size=1, max_size=4)))
        q_lengths = tuple(draw(st.sampled_from((n, 1 if n else 0, n // 3, n + 2))) for n in k_lengths)
    return Problem(
        batch=draw(st.integers(1, 2)),
        q_len=draw(st.sampled_from(sorted({1, max(1, k_len // 3), k_len, k_len + 5}))),
        k_len=k_len,
        heads=H,
        kv_heads=draw(st.sampled_from(sorted({1, 2, H}))),
        head_dim=d,
        value_dim=draw(st.sampled_from((d, 5))),
        window=draw(windows(k_len)),
        dilation=draw(st.sampled_from((1, 1, 2, "per_head"))) if not packed else draw(st.sampled_from((1, 2))),
        padding=draw(st.sampled_from(("none", "random", "empty_row"))),
        softcap=draw(st.sampled_from((0.0, 0.0, 1.5))),
        sinks=draw(st.booleans()),
        scale=draw(st.sampled_from((None, 1.0))),
        seed=draw(st.integers(0, 2**31)),
        q_lengths=q_lengths,
        k_lengths=k_lengths,
    )


def fix_dilation(problem: Problem) -> Problem:
    """ "per_head": one dilation per query head (1, 2, 3, ...), as the entry point takes."""
    if problem.dilation != "per_head":
        return problem
    return Problem(**{**problem.__dict__, "dilation": [1 + h % 3 for h in range(problem.heads)]})


def compare(problem: Problem, backend: str) -> None:
    """out and lse within 1e-10 of the reference in float64, rows with no key exactly 0 / -inf
    (or the sink), and the gradients of q, k, v and the sinks through both."""
    q, k, v, kwargs = problem.tensors()
    g = torch.Generator().manual_seed(problem.seed + 1)
    leaves = [x.requires_grad_() for x in (q, k, v, kwargs.get("sinks")) if x is not None]
    out, lse = sliding_window_attention(q, k, v, problem.window, backend=backend, return_lse=True, **kwargs)
    ref_out, ref_lse = dense_attention(q, k, v, problem.window, return_lse=True, **kwargs)
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape and out.dtype == lse.dtype == torch.float64
    assert_close64(out, ref_out)
    no_key = ref_lse == INF
    assert torch.equal(lse == INF, no_key) and (out[no_key] == 0).all()
    assert_close64(lse[~no_key], ref_lse[~no_key])
    d_out, d_lse = torch.randn(out.shape, generator=g, dtype=torch.float64), torch.randn(lse.shape, generator=g, dtype=torch.float64)

    def gradients(out, lse):
        lse = lse.masked_fill(lse == INF, 0.0)  # a row with no key and no sink: nothing to differentiate
        return torch.autograd.grad((out * d_out).sum() + (lse * d_lse).sum(), leaves)

    for fast, exact in zip(gradients(out, lse), gradients(ref_out, ref_lse)):
        assert torch.isfinite(fast).all()
        assert_close64(fast, exact, tol=1e-10 * max(1.0, exact.abs().amax().item() if exact.numel() else 0.0))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=20)
@given(problem=problems())
def test_batched_features_match_the_reference(backend, problem):
    compare(fix_dilation(problem), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=8)
@given(problem=problems(packed=True))
def test_packed_sequences_match_the_reference(backend, problem):
    compare(problem, backend)


@settings(max_examples=25)
@given(problem=st.one_of(problems(), problems(packed=True)), tile_rows=st.sampled_from((1, 3, 8)),
       group_cells=st.sampled_from((1, 64, 2**19)))
def test_tiles_on_many_tiles_match_the_reference(problem, tile_rows, group_cells):
    """The tiles with tiles of 1, 3 or 8 rows (their default, 64, makes one tile of the lengths
    above) in groups of one tile to all: grouped heads stacked in one product per tile, spans
    cut at the ends, softcap, sinks and packing across tile and group boundaries."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backends.BACKENDS, "tiles", partial(tiles.attend, tile_rows=tile_rows, group_cells=group_cells))
        compare(fix_dilation(problem), "tiles")


def test_packed_documents_do_not_see_each_other():
    """Packed: changing one document's keys changes only that document's rows, and a length-1
    document attends its one key (its output is that key's value)."""
    lengths = torch.tensor([0, 3, 4, 5], dtype=torch.int32)  # documents of 3, 1, 1 tokens
    q, k, v = (torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(3))
    out = sliding_window_attention(q, k, v, 2, cu_seqlens_q=lengths, cu_seqlens_k=lengths)
    assert_close64(out[3:], v[3:])  # a document of one token
    k2 = k.clone()
    k2[:3] = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    changed = sliding_window_attention(q, k2, v, 2, cu_seqlens_q=lengths, cu_seqlens_k=lengths)
    assert torch.equal(changed[3:], out[3:]) and not torch.allclose(changed[:3], out[:3])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("q_len, k_len, window", [(2, 9, (2, 1)), (7, 4, 1), (8, 8, (2, 0))])
def test_gradcheck_grouped_heads_softcap_and_sinks(backend, q_len, k_len, window):
    """torch.autograd.gradcheck of (out, lse) in q, k, v and the sinks: H = 4, H_kv = 2, a
    softcap, key padding, L_q < L_k, L_q > L_k and L_q = L_k."""
    g = torch.Generator().manual_seed(q_len * k_len)
    q = torch.randn(1, q_len, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, k_len, 2, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    sinks = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(1, k_len, dtype=torch.bool)
    mask[0, 1] = True

    def both(q, k, v, sinks):
        return sliding_window_attention(q, k, v, window, key_padding_mask=mask, softcap=1.2, sinks=sinks,
                                        backend=backend, return_lse=True)

    assert torch.autograd.gradcheck(both, (q, k, v, sinks))


def test_a_row_with_no_key_gives_zero_and_the_sink_takes_all_weight():
    """Queries beyond the keys' reach (L_q > L_k, a right side of 0) get out 0 and lse -inf, or
    lse = the sink with sinks; the sink's gradient there is 0."""
    q, k, v = (torch.randn(1, n, 2, 4, dtype=torch.float64) for n in (8, 3, 3))
    sinks = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    out, lse = sliding_window_attention(q, k, v, (1, 0), return_lse=True)
    assert (out[:, :5] == 0).all() and (lse[:, :5] == INF).all() and (lse[:, 5:] > INF).all()
    out, lse = sliding_window_attention(q, k, v, (1, 0), return_lse=True, sinks=sinks)
    assert (out[:, :5] == 0).all() and torch.equal(lse[0, :5], sinks.detach().expand(5, 2))
    (grad,) = torch.autograd.grad(lse[:, :5].sum(), sinks)
    assert torch.equal(grad, torch.full((2,), 5.0, dtype=torch.float64))  # d lse / d sink = 1 where the sink is all


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_against_float64(backend):
    """float32 inputs with every feature at once: within float32's rounding of the float64 result,
    outputs and the gradients of q, k, v and the sinks. A gradient entry is a sum of at most
    n = (6 + 2 + 1) x 2 terms (a key is seen by 9 queries in each of the 2 heads that read it):
    its error is held to n float32 epsilons of the largest gradient."""
    problem = Problem(2, 40, 61, 4, 2, 16, 16, (6, 2), [1, 2, 1, 1], "random", 2.0, True, None, 5)
    q, k, v, kwargs = problem.tensors(torch.float32)
    leaves = [x.requires_grad_() for x in (q, k, v, kwargs["sinks"])]
    out = sliding_window_attention(q, k, v, problem.window, backend=backend, **kwargs)
    leaves64 = [x.detach().double().requires_grad_() for x in leaves]
    ref = dense_attention(*leaves64[:3], problem.window, **{**kwargs, "sinks": leaves64[3]})
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)
    d_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * d_out).sum(), leaves)
    exact = torch.autograd.grad((ref * d_out).sum(), leaves64)
    n, eps = (6 + 2 + 1) * 2, torch.finfo(torch.float32).eps
    for fast, want in zip(grads, exact):
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast.double(), want, rtol=0, atol=n * eps * want.abs().max().item())


def sdpa_error(q, k, v, window, mask, ref):
    """The max error of PyTorch SDPA (enable_gqa, the reference's boolean mask) on these rounded
    inputs against ``ref``, over the rows that have a key."""
    L_q, L_k = q.shape[1], k.shape[1]
    allowed = allowed_keys(L_q, window, (1,), mask, key_len=L_k)  # B x 1 x L_q x L_k
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=allowed,
                                         enable_gqa=True).transpose(1, 2)
    sees = allowed.any(-1).transpose(1, 2)[..., None]  # B x L_q x 1 x 1
    return ((out.double() - ref).abs() * sees).nan_to_num(0.0).max().item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("q_len", (1, 40, 96, 101))
def test_half_precision_grouped_and_rectangular_no_worse_than_sdpa(backend, dtype, q_len):
    """float16/bfloat16 with grouped heads, L_q vs L_k = 96 and padding: the max error against
    float64 (same rounded inputs) at most 1.5x that of SDPA with enable_gqa and the same mask."""
    problem = Problem(2, q_len, 96, 4, 2, 64, 64, (12, 3), 1, "random", 0.0, False, None, q_len)
    q, k, v, kwargs = problem.tensors(dtype)
    ref = dense_attention(q.double(), k.double(), v.double(), problem.window, **kwargs)
    out = sliding_window_attention(q, k, v, problem.window, backend=backend, **kwargs)
    assert out.dtype == dtype
    assert (out.double() - ref).abs().max().item() <= 1.5 * sdpa_error(q, k, v, (12, 3), kwargs["key_padding_mask"], ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_precision_softcap_and_sinks_only_round_the_output(backend, dtype):
    """With a softcap and sinks (which SDPA does not take): the scores, softmax and sums run in
    float32, so the error against float64 on the same rounded inputs is the output's rounding,
    at most half a unit in the last place of the largest output, plus float32's small share."""
    problem = Problem(2, 64, 64, 4, 1, 64, 64, (8, 8), 1, "random", 1.5, True, 1.0, 3)
    q, k, v, kwargs = problem.tensors(dtype)
    out = sliding_window_attention(q, k, v, problem.window, backend=backend, **kwargs)
    ref = dense_attention(q.double(), k.double(), v.double(), problem.window,
                          **{**kwargs, "sinks": kwargs["sinks"].double()})
    assert (out.double() - ref).abs().max().item() <= torch.finfo(dtype).eps * ref.abs().max().item()


# Dropout.


def probabilities_through(backend, p, seed, q, k, window, **kwargs):
    """The dropped weights themselves: with v the identity over the keys ([B, L_k, H_kv, L_k],
    value j = e_j), out[b, i, h] is row i of head h's dropped probabilities."""
    B, L_k, H_kv, _ = k.shape
    identity = torch.eye(L_k, dtype=q.dtype).expand(B, H_kv, L_k, L_k).permute(0, 2, 1, 3)
    torch.manual_seed(seed)
    return sliding_window_attention(q, k, identity, window, backend=backend, dropout=p, **kwargs)


@pytest.mark.parametrize("backend", ("dense", "chunks"))
@pytest.mark.parametrize("q_len", (64, 20))
def test_dropout_keeps_each_weight_with_probability_one_minus_p_scaled(backend, q_len):
    """Each allowed weight is kept (times 1 / (1 - p)) or dropped: the kept fraction of 4 x 64 x
    about 11 weights is within 5 standard deviations of 1 - p, each kept weight is the undropped
    one / (1 - p) exactly, nothing outside the window gets weight, and the mean over 40 seeds is
    the undropped weights within the binomial spread."""
    p = 0.3
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, q_len, 4, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 64, 2, 8, generator=g, dtype=torch.float64)
    window = (6, 4)
    exact = probabilities_through(backend, 0.0, 0, q, k, window)
    allowed = exact > 0
    dropped = probabilities_through(backend, p, 0, q, k, window)
    kept = dropped != 0
    assert not (kept & ~allowed).any()
    assert_close64(dropped[kept], exact[kept] / (1 - p))
    n = allowed.sum().item()
    assert abs(kept.sum().item() / n - (1 - p)) <= 5 * (p * (1 - p) / n) ** 0.5
    mean = torch.stack([probabilities_through(backend, p, s, q, k, window) for s in range(40)]).mean(0)
    spread = exact * (p / (1 - p) / 40) ** 0.5  # the standard deviation of the mean of 40 draws
    assert ((mean - exact).abs() <= 5 * spread + 1e-12).all()


@pytest.mark.parametrize("backend", ("dense", "chunks"))
def test_dropout_same_seed_same_output_and_zero_exact(backend):
    """The same seed gives the same output, another seed another; p = 0 is attention without
    dropout exactly; lse is that of the undropped softmax; the values see the same drops as the
    weights (out = dropped weights x v)."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 48, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))

    def run(seed, p):
        torch.manual_seed(seed)
        return sliding_window_attention(q, k, v, (5, 0), backend=backend, dropout=p, return_lse=True)

    (a, lse_a), (b, _), (c, _) = run(0, 0.2), run(0, 0.2), run(1, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain, lse = sliding_window_attention(q, k, v, (5, 0), backend=backend, return_lse=True)
    assert torch.equal(run(0, 0.0)[0], plain) and torch.equal(lse_a, lse)
    weights = probabilities_through(backend, 0.2, 0, q, k, (5, 0))  # B x L x H x L_k
    assert_close64(a, torch.einsum("bihj,bjhd->bihd", weights, v))


@pytest.mark.parametrize("backend", ("dense", "chunks"))
def test_gradcheck_with_dropout(backend):
    """Under a fixed seed the dropped attention is a fixed function of q, k and v: gradcheck."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 10, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 10, 1, 2, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def dropped(q, k, v):
        torch.manual_seed(0)
        return sliding_window_attention(q, k, v, (1, 1), backend=backend, dropout=0.4)

    assert torch.autograd.gradcheck(dropped, (q, k, v))


@pytest.mark.parametrize("backend", ("tiles", "triton"))
def test_backends_without_dropout_run_the_chunks_with_a_warning(backend):
    """tiles and triton asked for with dropout run the chunks (the same draws: the same output);
    "auto" picks the chunks without a warning."""
    q, k, v = (torch.randn(1, 40, 2, 4, generator=torch.Generator().manual_seed(s)) for s in range(3))

    def run(name):
        torch.manual_seed(0)
        return sliding_window_attention(q, k, v, 3, backend=name, dropout=0.5)

    with pytest.warns(UserWarning, match=f"backend='{backend}' does not implement dropout: calls with dropout > 0 run backend='chunks'"):
        out = run(backend)
    assert torch.equal(out, run("chunks"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(run("auto"), out)


# The triton backend: every feature through the entry point, on tiny problems under Triton's
# interpreter (a few fixed problems: each call runs the kernel in Python). Each problem reaches
# the kernel; few queries (L_q <= left + right + 1, a decoding step) are a dense rectangle by
# design (attention._rectangle) and are covered by the batched tests above.


TRITON_PROBLEMS = {
    "grouped_rectangle_sinks_padding": Problem(1, 7, 20, 2, 1, 4, 4, (3, 1), 1, "random", 0.0, True, None, 11),
    "softcap_more_queries_than_keys": Problem(2, 13, 8, 4, 2, 8, 5, (3, 0), 1, "empty_row", 1.5, True, 1.0, 13),
    "heads_not_grouped_dilated": Problem(1, 12, 12, 2, 2, 4, 4, (2, 2), [1, 2], "none", 2.0, False, None, 14),
    "chunked_prefill_one_kv_head": Problem(2, 9, 30, 4, 1, 8, 8, (4, 0), 1, "random", 0.0, True, None, 15),
    "packed_with_softcap": Problem(1, 0, 0, 2, 1, 4, 4, (2, 0), 1, "none", 1.5, True, None, 12, (3, 1, 9, 0), (5, 1, 9, 2)),
}


@pytest.mark.triton
@pytest.mark.parametrize("name", TRITON_PROBLEMS)
def test_triton_backend_matches_the_reference_with_gradients(name, monkeypatch):
    """The kernel reads kv head h // (H / H_kv) itself; end-aligned queries (L_q < L_k, L_q > L_k),
    softcap, sinks, dilation, padding (a row of it) and packed documents: out, lse and the
    gradients of q, k, v and the sinks against float64 dense attention, the kernel called."""
    kernel, calls = backends.BACKENDS["triton"], []
    monkeypatch.setitem(backends.BACKENDS, "triton", lambda *args: calls.append(1) or kernel(*args))
    compare(TRITON_PROBLEMS[name], "triton")
    assert calls
