"""The "tiles" backend against the float64 references, its tiling, and its memory bound.

Problems are drawn by hypothesis: B 1..3, H 1..4, d from (1, 2, 3, 16, 64), d_v = d or not, L up
to 160, windows (left, right) from (0, 0) to beyond L (clipped, as the entry point passes them),
causal and asymmetric ones, key padding including queries with no key and fully padded batch rows,
inputs in several memory layouts, and the tiling itself (tile rows and group size) drawn too, so
that small problems go through every kind of tile group: spans clamped at the start, sliding,
clamped at the end, and a last short tile.

float64: ``out`` within 1e-10 of ``dense_attention``, ``lse`` of a float64 logsumexp over the
allowed scores, and the gradients of sum(out * g1) + sum(lse * g2) of both. float16 and
bfloat16: the largest error against float64 on the same rounded inputs at most 1.5 times that of
PyTorch's own attention (SDPA with the same mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from cases import HEAD_DIMS, assert_close64
from swa_tutorial import dense_attention
from swa_tutorial.backends import tiles
from swa_tutorial.core.tiling import tile_groups
from swa_tutorial.core.windows import clip_window, window_mask

LAYOUTS = ("contiguous", "heads_first", "strided", "expanded")
PADDINGS = ("none", "random", "gap", "empty_row")


@dataclass(frozen=True)
class Problem:
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    value_dim: int
    window: tuple[int, int]  # as drawn: may reach beyond L
    padding: str  # one of PADDINGS
    layout: str  # one of LAYOUTS
    tile_rows: int
    group_cells: int
    seed: int

    @property
    def clipped(self) -> tuple[int, int]:
        """The window as the entry point hands it to a backend: each side at most L - 1."""
        return clip_window(self.window, self.seq_len - 1)

    def tensors(self, dtype=torch.float64):
        """q, k [B, L, H, d], v [B, L, H, d_v] (standard normal, rounded to dtype, laid out as
        ``layout`` says) and the key padding mask bool [B, L] or None."""
        g = torch.Generator().manual_seed(self.seed)
        B, L, H = self.batch, self.seq_len, self.heads
        shapes = [(B, L, H, self.head_dim)] * 2 + [(B, L, H, self.value_dim)]
        q, k, v = (laid_out(torch.randn(s, generator=g, dtype=torch.float64), self.layout) for s in shapes)
        return q.to(dtype), k.to(dtype), v.to(dtype), self._mask(g)

    def _mask(self, g):
        B, L = self.batch, self.seq_len
        if self.padding == "none":
            return None
        density = torch.rand(B, 1, generator=g, dtype=torch.float64)  # from sparse to almost all padding
        mask = torch.rand(B, L, generator=g, dtype=torch.float64) < density
        if self.padding == "gap":  # a run of keys as long as a window: a query in it may see none
            start = int(torch.randint(0, L, (), generator=g))
            mask[:, start : start + sum(self.clipped) + 1] = True
        if self.padding == "empty_row":
            mask[int(torch.randint(0, B, (), generator=g))] = True
        return mask


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as x [B, L, H, d] in another memory layout."""
    if layout == "heads_first":  # a [B, H, L, d] tensor seen through transpose
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "strided":  # every other element of a larger buffer, last dim included
        return torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)[..., ::2].copy_(x)
    if layout == "expanded":  # batch rows that share memory: one row, zero stride
        return x[:1].expand(x.shape)
    return x


@st.composite
def problems(draw, max_len: int = 160) -> Problem:
    L = draw(st.integers(1, max_len))
    side = st.one_of(st.integers(0, 3), st.integers(0, L + 5))  # tiny, up to beyond L
    shape = draw(st.sampled_from(("symmetric", "causal", "asymmetric")))
    left = draw(side)
    right = {"symmetric": left, "causal": 0, "asymmetric": draw(side)}[shape]
    d = draw(st.sampled_from(HEAD_DIMS))
    rows = draw(st.integers(1, 40))
    return Problem(
        batch=draw(st.integers(1, 3)),
        seq_len=L,
        heads=draw(st.integers(1, 4)),
        head_dim=d,
        value_dim=draw(st.sampled_from((d, 1, 5))),
        window=(left, right),
        padding=draw(st.sampled_from(PADDINGS)),
        layout=draw(st.sampled_from(LAYOUTS)),
        tile_rows=rows,
        group_cells=draw(st.integers(1, 4 * rows * (rows + 2 * L))),  # from one tile a group to all
        seed=draw(st.integers(0, 2**32 - 1)),
    )


def attend(problem: Problem, q, k, v, mask, scale):
    return tiles.attend(q, k, v, problem.clipped, mask, scale,
                        tile_rows=problem.tile_rows, group_cells=problem.group_cells)


def has_key(L: int, window, mask) -> torch.Tensor:
    """bool [B or 1, L, 1]: True for a query with at least one allowed key."""
    allowed = window_mask(L, window)[None]  # 1 x L x L
    if mask is not None:
        allowed = allowed & ~mask[:, None, :]
    return allowed.any(dim=-1)[..., None]


def reference_lse(q, k, window, mask, scale) -> torch.Tensor:
    """log sum_j exp(scale q_i . k_j) over the allowed keys, in float64: [B, L, H] (-inf with no key).

    A query with no key gets a dummy row of zeros inside (so the gradient stays finite), then -inf.
    """
    L = q.shape[1]
    allowed = window_mask(L, window)[None, None]  # 1 x 1 x L x L
    if mask is not None:
        allowed = allowed & ~mask[:, None, None, :]  # B x 1 x L x L
    sees = allowed.any(dim=-1, keepdim=True)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L x L
    lse = torch.where(sees, scores, 0.0).masked_fill(sees & ~allowed, float("-inf")).logsumexp(dim=-1)
    return torch.where(sees[..., 0], lse, float("-inf")).transpose(1, 2)  # B x L x H


def leaves(*xs):
    return [x.detach().requires_grad_() for x in xs]


@given(problems())
def test_float64_outputs_and_gradients_match_dense(problem):
    """out, lse, and the gradients of both in q, k, v, as dense float64 attention gives them."""
    q, k, v, mask = problem.tensors()
    scale = problem.head_dim**-0.5 / 2
    g = torch.Generator().manual_seed(problem.seed + 1)
    g_out = torch.randn(v.shape, generator=g, dtype=torch.float64)
    g_lse = torch.randn(v.shape[:-1], generator=g, dtype=torch.float64)  # also where lse = -inf

    q1, k1, v1 = leaves(q, k, v)
    out, lse = attend(problem, q1, k1, v1, mask, scale)
    assert out.dtype == lse.dtype == torch.float64 and out.is_contiguous()
    grads = torch.autograd.grad((out, lse), (q1, k1, v1), (g_out, g_lse))

    q2, k2, v2 = leaves(q, k, v)
    ref_out = dense_attention(q2, k2, v2, problem.window, key_padding_mask=mask, scale=scale)
    ref_lse = reference_lse(q2, k2, problem.window, mask, scale)
    sees = torch.isfinite(ref_lse)
    # A query with no key contributes nothing through lse: its lse is the constant -inf.
    loss = (ref_out * g_out).sum() + (torch.where(sees, ref_lse, 0.0) * g_lse).sum()
    ref_grads = torch.autograd.grad(loss, (q2, k2, v2))

    assert_close64(out, ref_out)
    assert torch.equal(torch.isinf(lse), ~sees) and (lse[~sees] < 0).all()
    assert_close64(torch.where(sees, lse, 0.0), torch.where(sees, ref_lse, 0.0))
    for grad, ref in zip(grads, ref_grads):
        assert_close64(grad, ref)


def test_queries_without_keys_give_zeros_and_no_gradient():
    q, k, v = leaves(*(torch.randn(3, 20, 2, 4, dtype=torch.float64) for _ in range(3)))
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0] = True  # a batch row that is all padding
    mask[1, 5:16] = True  # query 10 with window (5, 5) sees only padding
    out, lse = tiles.attend(q, k, v, (5, 5), mask, 0.5, tile_rows=4)
    assert (out[0] == 0).all() and (out[1, 10] == 0).all() and torch.isfinite(out).all()
    assert (lse[0] == float("-inf")).all() and (lse[1, 10] == float("-inf")).all()
    assert torch.isfinite(lse[2]).all()
    (out.sum() + lse[2].sum()).backward()
    assert (q.grad[0] == 0).all() and (q.grad[1, 10] == 0).all() and torch.isfinite(q.grad).all()
    assert (k.grad[0] == 0).all() and (v.grad[0] == 0).all()


@pytest.mark.parametrize(
    "L, window, tile_rows, kind",
    [
        (1, (0, 0), 1, "none"),
        (5, (0, 0), 2, "none"),
        (7, (2, 1), 2, "none"),  # every kind of group: clamped, sliding, last short tile
        (9, (3, 0), 2, "gap"),  # causal
        (8, (7, 7), 3, "none"),  # the window covers the sequence
        (10, (1, 4), 3, "empty_row"),
    ],
)
def test_gradcheck(L, window, tile_rows, kind):
    """Finite differences (gradcheck's fast mode: random projections of the Jacobian), of the
    gradients too (the backward is itself differentiable)."""
    B, H, d, dv = 2, 2, 3, 2
    g = torch.Generator().manual_seed(L)
    q, k = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(B, L, H, dv, generator=g, dtype=torch.float64, requires_grad=True)
    mask = None
    if kind != "none":
        mask = torch.zeros(B, L, dtype=torch.bool)
        mask[0, L // 2 : L // 2 + sum(window) + 1] = True
        if kind == "empty_row":
            mask[1] = True

    def attention(q, k, v):
        out, lse = tiles.attend(q, k, v, window, mask, 0.7, tile_rows=tile_rows, group_cells=2 * tile_rows**2)
        return out, lse.masked_fill(lse == float("-inf"), 0.0)  # -inf has no finite difference

    assert torch.autograd.gradcheck(attention, (q, k, v), fast_mode=True)
    assert torch.autograd.gradgradcheck(attention, (q, k, v), fast_mode=True)


def test_expanded_upstream_gradient():
    """out.sum() sends a zero-stride gradient; it must give the gradients of a dense one."""
    q, k, v = leaves(*(torch.randn(2, 70, 3, 8, dtype=torch.float64) for _ in range(3)))
    out, lse = tiles.attend(q, k, v, (6, 2), None, 0.3, tile_rows=8)
    ones = torch.ones((), dtype=out.dtype).expand(out.shape)
    assert ones.stride() == (0, 0, 0, 0)
    expanded = torch.autograd.grad(out, (q, k, v), ones, retain_graph=True)
    dense = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    for a, b in zip(expanded, dense):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("spread", (1.0, 4.0, 16.0))
@pytest.mark.parametrize("padded", (False, True))
def test_half_precision_no_worse_than_sdpa(dtype, spread, padded):
    """Max error against float64 (same rounded inputs) at most 1.5x that of PyTorch's SDPA."""
    B, L, H, d, window = 2, 128, 2, 64, (16, 16)
    g = torch.Generator().manual_seed(int(spread) + 100 * padded)
    q, k = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64) * spread**0.5 for _ in range(2))
    v = torch.randn(B, L, H, d, generator=g, dtype=torch.float64)
    q, k, v = (x.to(dtype) for x in (q, k, v))  # score std = spread with scale d^-1/2
    mask = (torch.rand(B, L, generator=g) < 0.3) if padded else None
    scale = d**-0.5
    sees = has_key(L, window, mask)[..., None]  # B x L x 1 x 1 (SDPA gives NaN without a key)

    exact = dense_attention(q.double(), k.double(), v.double(), window, key_padding_mask=mask, scale=scale)
    out, _ = tiles.attend(q, k, v, window, mask, scale)
    allowed = window_mask(L, window)[None, None] & (True if mask is None else ~mask[:, None, None, :])
    sdpa = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=allowed, scale=scale)

    def error(x):
        return (torch.where(sees, x.double(), 0.0) - torch.where(sees, exact, 0.0)).abs().max().item()

    assert out.dtype == torch.float32
    assert error(out) <= 1.5 * error(sdpa.transpose(1, 2))


def test_nonfinite_inputs_reach_exactly_the_rows_that_score_them():
    q, k, v = (torch.randn(1, 40, 1, 4, dtype=torch.float64) for _ in range(3))
    k[0, 20, 0, 1] = float("nan")
    k[0, 5, 0, 0] = float("inf")
    out, lse = tiles.attend(q, k, v, (3, 1), None, 1.0, tile_rows=8)
    expected = dense_attention(q, k, v, (3, 1))
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(lse.isnan(), out.isnan().any(-1))
    assert expected.isnan().any() and not expected.isnan().all()


def test_meta_tensors_give_shapes_and_dtypes():
    q, k = (torch.empty(2, 37, 3, 16, device="meta", dtype=torch.bfloat16) for _ in range(2))
    v = torch.empty(2, 37, 3, 5, device="meta", dtype=torch.bfloat16)
    mask = torch.empty(2, 37, device="meta", dtype=torch.bool)
    out, lse = tiles.attend(q, k, v, (4, 0), mask, 0.25, tile_rows=8)
    assert (out.shape, out.device, out.dtype) == ((2, 37, 3, 5), torch.device("meta"), torch.float32)
    assert (lse.shape, lse.dtype) == ((2, 37, 3), torch.float32)


def test_inputs_are_not_modified():
    q, k, v = (torch.randn(2, 30, 2, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 30) < 0.3
    before = [x.detach().clone() for x in (q, k, v, mask)]
    out, lse = tiles.attend(q, k, v, (3, 5), mask, 0.5, tile_rows=4)
    (out.sum() + lse.masked_fill(lse.isinf(), 0).sum()).backward()
    assert all(torch.equal(x, y) for x, y in zip((q.detach(), k.detach(), v.detach(), mask), before))


@given(st.integers(1, 200), st.integers(0, 210), st.integers(0, 210), st.integers(1, 70), st.integers(1, 5000))
def test_tile_groups_cover_every_query_and_its_keys(L, left, right, rows, cells):
    """Each query is in exactly one tile; that tile's span holds all its keys, stays in [0, L) and
    holds at most b + left + right keys; a tile alone in its group scores exactly its keys."""
    window = clip_window((left, right), L - 1)
    groups = tile_groups(L, window, rows, cells)
    full = min(min(rows, L) + sum(window), L)
    seen = torch.zeros(L, dtype=torch.int64)
    for group in groups:
        assert group.tiles == 1 or group.tiles * group.rows * group.span <= cells
        assert group.key_step in (0, group.rows) and group.span <= full
        for t in range(group.tiles):
            first_key = group.first_key + t * group.key_step
            first_query = group.first_query + t * group.rows
            seen[first_query : first_query + group.rows] += 1
            needed = (max(first_query - window[0], 0), min(first_query + group.rows + window[1], L))
            assert 0 <= first_key <= needed[0] and needed[1] <= first_key + group.span <= L
            if group.tiles == 1:
                assert (first_key, first_key + group.span) == needed
    assert (seen == 1).all()


@pytest.mark.parametrize("L, window, rows", [(30, (5, 2), 4), (30, (29, 0), 7), (9, (8, 8), 4), (50, (0, 0), 6)])
def test_add_spans_is_the_adjoint_of_spans(L, window, rows):
    """<spans(x), g> = <x, add_spans(g)> for every group: the backward adds each gradient where
    the forward read it."""
    for group in tile_groups(L, window, rows, 3 * rows * (rows + sum(window))):
        x = torch.randn(L, 3, dtype=torch.float64)
        g = torch.randn(group.tiles, group.span, 3, dtype=torch.float64)
        back = torch.zeros_like(x)
        tiles.add_spans(back[group.keys], g, group)
        assert torch.allclose((tiles.spans(x[group.keys], group) * g).sum(), (x * back).sum(), rtol=1e-12)


class LargestAllocation(TorchDispatchMode):
    """Records the most elements any operator allocates in one tensor, forward and backward,
    leaving out the tensors of sequence size [B, L, H, ...] (inputs, outputs, lse, gradients)."""

    def __init__(self, sequence_shape):
        super().__init__()
        self.sequence_shape = tuple(sequence_shape)
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        inputs = {x.untyped_storage().data_ptr() for x in tensors(list(args) + list(kwargs.values()))}
        for x in tensors(result):  # a view or an in-place result shares an input's storage
            if x.untyped_storage().data_ptr() not in inputs and tuple(x.shape[:3]) != self.sequence_shape:
                self.largest = max(self.largest, x.numel())
        return result


def tensors(x) -> list:
    """The tensors in x, a tensor or a (nested) list or tuple of anything."""
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for item in x for t in tensors(item)] if isinstance(x, (list, tuple)) else []


@pytest.mark.parametrize("window", [(16, 16), (32, 0)])
def test_memory_per_group_is_bounded(window):
    """Besides sequence-sized tensors, no operator of the forward or the backward allocates more
    than a group's scores (at most max(group_cells, b span) elements), whatever L."""
    rows, cells = 8, 2048
    largest = []
    for L in (256, 1024):
        q, k, v = leaves(*(torch.randn(1, L, 2, 4) for _ in range(3)))
        with LargestAllocation((1, L, 2)) as mode:
            out, lse = tiles.attend(q, k, v, window, None, 0.5, tile_rows=rows, group_cells=cells)
            (out.sum() + lse.sum()).backward()
        assert 0 < mode.largest <= max(cells, rows * (rows + sum(window)))
        largest.append(mode.largest)
    assert largest[0] == largest[1]


@given(st.integers(1, 120), st.integers(0, 130), st.integers(0, 130), st.integers(1, 40), st.integers(1, 3000))
def test_a_group_mask_blocks_exactly_the_cells_outside_the_window(L, left, right, rows, cells):
    """The mask's column pieces leave out only columns that no row of any tile blocks."""
    window = clip_window((left, right), L - 1)
    for group in tile_groups(L, window, rows, cells):
        blocked = tiles.window_blocked(group, window, "cpu")
        mask = tiles.GroupMask.build(group, window, blocked, None)
        scores = mask.apply(torch.zeros(group.tiles, 1, group.rows, group.span))
        assert torch.equal(scores.isinf(), blocked.expand(group.tiles, -1, -1)[:, None])
