"""The tiled algorithm ("tiles" backend): query tiles against their key span, no band stored.

Split the L queries into tiles of b consecutive rows (b = ``TILE_ROWS``). The keys that the rows
i0 .. i0 + b - 1 may see lie in one span of b + left + right keys, i0 - left .. i0 + b - 1 + right,
so a tile's scores are one small dense product, [b, d] x [d, span]. Inside it the window is
exact: cell (r, c) is kept when -left <= (span start + c) - (i0 + r) <= right and the key is not
padding; every other cell is set to -inf before the softmax (``masked_fill``, never a large
negative number added). The tiles' spans overlap, but no tile's scores outlive it.

The work, per key/value head, in groups of tiles. Grouped heads: the H / H_kv query heads that
read one key/value head score its spans together, the (H / H_kv) b rows of their tile stacked
into one product, so k and v are indexed, never repeated.

* **Forward.** For each group of g tiles of one key/value head: scores [g, (H / H_kv) b, span] = Q K^T
  (q scaled in the accumulation dtype), with a softcap c > 0 capped at c tanh(scores / c), the
  cells outside the window masked, P = softmax(scores), O = P V, and each
  row's log-sum-exp from P (:func:`~swa_tutorial.core.softmax.lse_from_probs`). A query with
  no allowed key gets O = 0 and lse = -inf.
* **Backward** (FlashAttention-2's, recomputing instead of storing): from q, k, v, O and lse,
  each group recomputes P = exp(scores - lse) and, with dO and dlse the upstream gradients and
  D_i = sum_c dO_ic O_ic,

      dV_span = P^T dO,  dP = dO V_span^T,  dS = P * (dP - D + dlse),
      dQ = scale * dS K_span,  dK_span = dS^T (scale * Q),

  (with a softcap, dS times 1 - tanh^2 of the uncapped score / c first: the derivative of the
  cap), then adds each tile's dK_span, dV_span to the keys it came from (neighbouring spans overlap,
  so the adds overlap too). The backward is plain differentiable tensor code, so second
  derivatives work (``create_graph=True``: a gradient penalty, a Hessian-vector product), as
  on the chunks; only then does autograd record it, and that record holds every group's
  recomputed weights, B H L (b + left + right) numbers, as many as the band.

Memory: besides O(L d) for the inputs, outputs and gradients, the work on one group of one
key/value head holds a few tensors of at most g x span x max((H / H_kv) b, d, d_v) elements, g
the largest number of tiles with g (H / H_kv) b span <= ``GROUP_CELLS`` (at least 1), so the peak
does not grow with L, B or H. The
tiles' spans are views of k and v (``unfold``), not copies. Near either end of the sequence a
tile's span is cut at the end (:func:`~swa_tutorial.core.tiling.tile_groups`), so no key outside
the sequence is ever made up, and a window as wide as the sequence scores L x L cells, as many as
dense attention. (A causal window (left, 0) with several query heads per key/value head, each
tile a group of its own, scores about left^2 / 2 cells per head fewer than L (b + left): 13% of
them at L = 16384 and left = 4095.)

Precision: for float16 and bfloat16, q and k are upcast to float32 and the scale is applied in
float32, so the scores are accumulated and kept in float32; the softmax and P V run in float32;
``out`` and ``lse`` come back in float32 (float64 for float64 inputs).

Why one exact softmax over the whole span, not FlashAttention's online softmax over key
sub-tiles: a GPU kernel needs the online form because a tile's scores must fit in on-chip memory.
Here a group's scores fit in the CPU's cache anyway, and the exact form lets PyTorch's fused
softmax do in one call what the online form needs several calls per sub-tile for. The exact
form, b = 64 and ``GROUP_CELLS`` = 2^19 were picked from a few settings timed on a 2-core CPU
(no result file kept); the timings of the chosen setting are book/data/cpu-float32-*tiles.json,
read in the tiles chapter (book/16_tiles.ipynb) and the benchmarks chapter.

Every group costs a few dozen small PyTorch calls per head, so the path suits long sequences.
On a CPU shared with other busy processes, OpenMP's default of spinning idle threads makes each
of those calls wait for a thread that is not running; ``OMP_WAIT_POLICY=passive`` (set before
PyTorch starts) avoids that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.softmax import lse_from_probs
from swa_tutorial.core.tiling import TileGroup, tile_groups

TILE_ROWS = 64  # b: queries per tile
GROUP_CELLS = 2**19  # the most score cells (tiles x rows x span) one group of one head holds

NEG_INF = float("-inf")


def spans(keys: torch.Tensor, group: TileGroup) -> torch.Tensor:
    """The span of every tile: keys [n, ...] (the rows ``group.keys``) -> [tiles, span, ...], a view."""
    if group.key_step:
        return keys.unfold(0, group.span, group.key_step).movedim(-1, 1)
    return keys.expand(group.tiles, *keys.shape)


def add_spans(keys: torch.Tensor, grad: torch.Tensor, group: TileGroup) -> None:
    """The adjoint of :func:`spans`, in place: keys [n, c] (the rows ``group.keys``) += each
    tile's grad [tiles, span, c] at the rows it was read from (overlapping spans add up)."""
    for tile, tile_grad in enumerate(grad):
        start = tile * group.key_step
        keys[start : start + group.span].add_(tile_grad)


def window_blocked(group: TileGroup, window: tuple[int, int], device) -> torch.Tensor:
    """The cells of a group's scores outside the window: bool [tiles, rows, span] (True = blocked).

    Cell (r, c) of tile t pairs query first_query + t rows + r with key first_key + t key_step + c;
    it is blocked when key - query < -left or > right. A sliding group has one pattern for all its
    tiles: [1, rows, span].
    """
    left, right = window
    tiles = 1 if group.key_step == group.rows else group.tiles
    span_start = group.first_key + torch.arange(tiles, device=device) * group.key_step
    tile_start = group.first_query + torch.arange(tiles, device=device) * group.rows
    key_minus_query = ((span_start - tile_start)[:, None, None] + torch.arange(group.span, device=device)
                       - torch.arange(group.rows, device=device)[:, None])  # tiles x rows x span
    return (key_minus_query < -left) | (key_minus_query > right)


@dataclass
class GroupMask:
    """Which score cells of a group (one batch row) get -inf, as column pieces.

    ``pieces``: (columns, bool mask [tiles or 1, rows, width]) pairs, True = blocked; columns
    that no row blocks are left out. ``no_key``: bool [tiles, rows], True for a query that may
    attend no key at all (None without padding: then every query sees at least its own key).
    """

    pieces: list[tuple[slice, torch.Tensor]]
    no_key: torch.Tensor | None = None

    @classmethod
    def build(cls, group: TileGroup, window: tuple[int, int], blocked: torch.Tensor,
              padding: torch.Tensor | None) -> "GroupMask":
        """From :func:`window_blocked` and padding bool [L] (one batch row, True = padding) or None."""
        span = group.span
        if padding is not None:
            blocked = blocked | spans(padding[group.keys], group)[:, None, :]  # tiles x rows x span
            return cls([(slice(0, span), blocked)], no_key=blocked.all(dim=-1))
        # Cell (r, c) of tile t: query minus key = D_t + r - c, with D_t linear in t. Column c is
        # free (no row of any tile blocks it) when D_t + rows - 1 - c <= left and D_t - c >= -right
        # for every t, so the first and the last tile bound the free columns.
        left, right = window
        D = [group.first_query - group.first_key + t * (group.rows - group.key_step) for t in (0, group.tiles - 1)]
        free_from = min(max(max(D) + group.rows - 1 - left, 0), span)
        free_to = max(min(min(D) + right + 1, span), 0)
        if free_from < free_to:
            pieces = [(slice(0, free_from), blocked[..., :free_from]), (slice(free_to, span), blocked[..., free_to:])]
            return cls([(cols, m) for cols, m in pieces if m.shape[-1]])
        return cls([(slice(0, span), blocked)])

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Set the blocked cells of scores [tiles, n, rows, span] (its n heads alike) to -inf, in place."""
        for cols, blocked in self.pieces:
            scores[..., cols].masked_fill_(blocked[:, None], NEG_INF)
        return scores


@dataclass
class HeadGroup:
    """One tile group of one key/value head of one batch row, with the H / H_kv query heads that
    read it (``heads``, n of them below), its operands in the accumulation dtype."""

    b: int
    kv_head: int
    heads: slice  # the n query heads that read kv_head
    group: TileGroup
    mask: GroupMask
    q_tiles: torch.Tensor  # tiles x (n rows) x d, already times scale: head by head, rows within
    k_spans: torch.Tensor  # tiles x span x d (a view where no upcast is needed)
    v_spans: torch.Tensor  # tiles x span x d_v
    softcap: float

    @property
    def rows(self) -> tuple:
        """Index of its queries in a [B, L, H, ...] tensor."""
        return self.b, self.group.queries, self.heads

    @property
    def keys(self) -> tuple:
        """Index of its keys in a [B, L, H_kv, ...] tensor."""
        return self.b, self.group.keys, self.kv_head

    def tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Its queries' rows of x [B, L, H, ...] as [tiles, n, rows, ...]."""
        return x[self.rows].unflatten(0, (self.group.tiles, self.group.rows)).movedim(2, 1)

    def untiled(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`tiled`: [tiles, n, rows, ...] -> [tiles rows, n, ...], a view."""
        return x.movedim(1, 2).flatten(0, 1)

    def scores(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scores, t): scale q . k for every cell, capped at c t with t = tanh(q . k scale / c) when
        ``softcap`` c > 0 (t None without), -inf outside the window or at padding: [tiles, n, rows, span]."""
        scores = torch.bmm(self.q_tiles, self.k_spans.transpose(1, 2)).unflatten(1, (-1, self.group.rows))
        capped = None
        if self.softcap:
            capped = torch.tanh(scores / self.softcap)
            scores = capped * self.softcap
        return self.mask.apply(scores), capped


def head_groups(q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
    """Every tile group of every key/value head and batch row in turn, as :class:`HeadGroup`.
    The n = H / H_kv query heads of a key/value head score its spans together, in one product."""
    B, L, H, d = q.shape
    kv_heads = k.shape[2]
    n = H // kv_heads
    acc = accumulation_dtype(q.dtype)
    for group in tile_groups(L, window, tile_rows, max(1, group_cells // n)):
        blocked = window_blocked(group, window, q.device)
        for b in range(B):
            padding = None if key_padding_mask is None else key_padding_mask[b]
            mask = GroupMask.build(group, window, blocked, padding)
            for kv_head in range(kv_heads):
                heads = slice(kv_head * n, (kv_head + 1) * n)
                q_rows = q[b, group.queries, heads].unflatten(0, (group.tiles, group.rows)).movedim(2, 1)
                q_tiles = q_rows.reshape(group.tiles, n * group.rows, d).to(acc) * scale  # tiles x (n rows) x d
                k_spans = spans(k[b, group.keys, kv_head].to(acc), group)
                v_spans = spans(v[b, group.keys, kv_head].to(acc), group)
                yield HeadGroup(b, kv_head, heads, group, mask, q_tiles, k_spans, v_spans, softcap)


def _forward(q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
    B, L, H, _ = q.shape
    acc = accumulation_dtype(q.dtype)
    out = torch.empty(B, L, H, v.shape[-1], dtype=acc, device=q.device)
    lse = torch.empty(B, L, H, dtype=acc, device=q.device)
    for work in head_groups(q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
        scores, _ = work.scores()  # tiles x n x rows x span
        row_max = scores.amax(dim=-1)  # tiles x n x rows
        probs = torch.softmax(scores, dim=-1)
        out_tiles = torch.bmm(probs.flatten(1, 2), work.v_spans).unflatten(1, scores.shape[1:3])  # tiles x n x rows x d_v
        lse_tiles = lse_from_probs(row_max, probs)
        if work.mask.no_key is not None:  # their softmax is 0 / 0
            out_tiles.masked_fill_(work.mask.no_key[:, None, :, None], 0.0)
            lse_tiles.masked_fill_(work.mask.no_key[:, None], NEG_INF)
        out[work.rows] = work.untiled(out_tiles)
        lse[work.rows] = work.untiled(lse_tiles)
    return out, lse


def _backward(q, k, v, out, lse, dout, dlse, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
    acc = out.dtype
    dq, dk, dv = (torch.zeros(x.shape, dtype=acc, device=x.device) for x in (q, k, v))
    lse = lse.masked_fill(lse == NEG_INF, 0.0)  # a query with no key: exp(-inf - 0) = 0 everywhere
    for work in head_groups(q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
        dout_by_head = work.tiled(dout)  # tiles x n x rows x d_v
        dout_tiles = dout_by_head.flatten(1, 2)  # tiles x (n rows) x d_v
        scores, capped = work.scores()
        probs = scores.sub_(work.tiled(lse)[..., None]).exp_().flatten(1, 2)  # tiles x (n rows) x span
        add_spans(dv[work.keys], torch.bmm(probs.transpose(1, 2), dout_tiles), work.group)
        dprobs = torch.bmm(dout_tiles, work.v_spans.transpose(1, 2))  # tiles x (n rows) x span
        delta = (dout_by_head * work.tiled(out)).sum(dim=-1) - work.tiled(dlse)  # tiles x n x rows: D - dlse
        dscores = dprobs.sub_(delta.flatten(1, 2)[..., None]).mul_(probs)
        if capped is not None:  # through s -> c tanh(s / c): times 1 - tanh^2
            dscores = dscores * (1 - capped.square()).flatten(1, 2)
        dq[work.rows] = work.untiled((torch.bmm(dscores, work.k_spans) * scale).unflatten(1, (-1, work.group.rows)))
        add_spans(dk[work.keys], torch.bmm(dscores.transpose(1, 2), work.q_tiles), work.group)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _tangent(q, k, v, lse, tangents, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
    """Forward mode: the change of (out, lse) for a change ``tangents`` = (tq, tk, tv) of (q, k, v),
    tile group by tile group. With P the weights and dS = scale (tq k^T + q tk^T) the change of
    the scores (times 1 - tanh^2 under a softcap):

        dlse = sum_c P dS,  dP = P (dS - dlse),  dO = dP V_span + P dV_span.
    """
    acc = lse.dtype
    tangent_out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=acc, device=q.device)
    tangent_lse = torch.zeros(q.shape[:3], dtype=acc, device=q.device)
    lse = lse.masked_fill(lse == NEG_INF, 0.0)  # a query with no key: weights exp(-inf - 0) = 0
    settings = (window, key_padding_mask, scale, softcap, tile_rows, group_cells)
    for work, moved in zip(head_groups(q, k, v, *settings), head_groups(*tangents, *settings)):
        scores, capped = work.scores()
        probs = scores.sub_(work.tiled(lse)[..., None]).exp_()  # tiles x n x rows x span
        dscores = (torch.bmm(moved.q_tiles, work.k_spans.transpose(1, 2))
                   + torch.bmm(work.q_tiles, moved.k_spans.transpose(1, 2))).unflatten(1, (-1, work.group.rows))
        if capped is not None:
            dscores = dscores * (1 - capped.square())
        dlse = (probs * dscores).sum(dim=-1)  # tiles x n x rows
        dprobs = probs * (dscores - dlse[..., None])
        dout = torch.bmm(dprobs.flatten(1, 2), work.v_spans) + torch.bmm(probs.flatten(1, 2), moved.v_spans)
        tangent_out[work.rows] = work.untiled(dout.unflatten(1, (-1, work.group.rows)))
        tangent_lse[work.rows] = work.untiled(dlse)
    return tangent_out, tangent_lse


class TiledAttention(torch.autograd.Function):
    """(out, lse) from q, k, v; the backward recomputes the scores tile group by tile group, and
    so does forward mode (:meth:`jvp`: torch.autograd.forward_ad's dual tensors)."""

    @staticmethod
    def forward(ctx, q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells):
        out, lse = _forward(q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.save_for_forward(q, k, v, lse, key_padding_mask)
        ctx.settings = (window, scale, softcap, tile_rows, group_cells)
        return out, lse

    @staticmethod
    def jvp(ctx, tq, tk, tv, *_):
        q, k, v, lse, key_padding_mask = ctx.saved_tensors
        window, scale, softcap, tile_rows, group_cells = ctx.settings
        tangents = [torch.zeros_like(x) if t is None else t for x, t in zip((q, k, v), (tq, tk, tv))]
        return _tangent(q, k, v, lse, tangents, window, key_padding_mask, scale, softcap, tile_rows, group_cells)

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
        window, scale, softcap, tile_rows, group_cells = ctx.settings
        # An expanded (zero-stride) gradient, e.g. from out.sum(), is read once per tile: copy it once.
        dout, dlse = dout.contiguous(), dlse.contiguous()
        grads = _backward(q, k, v, out, lse, dout, dlse, window, key_padding_mask, scale, softcap, tile_rows, group_cells)
        return *grads, None, None, None, None, None, None


def attend(q, k, v, window, key_padding_mask, scale, softcap=0.0, *, tile_rows: int = TILE_ROWS,
           group_cells: int = GROUP_CELLS):
    """Sliding-window attention by tiles: (out [B, L, H, d_v], lse [B, L, H]).

    q: [B, L, H, d]; k: [B, L, H_kv, d]; v: [B, L, H_kv, d_v] (H a multiple of H_kv: query head h
    reads kv head h // (H / H_kv), indexed, never repeated); one floating dtype and device, any
    strides. ``softcap`` c > 0 caps the scaled scores at c tanh(s / c) before the mask.
    ``window``: (left, right), ints with 0 <= left, right <= L - 1: query i attends key j iff
    i - left <= j <= i + right and key j is not padding (``key_padding_mask`` bool [B, L], True =
    padding, or None). ``scale``: a finite float on q . k. Returns ``out`` (contiguous) and
    ``lse`` = log sum_j exp(scale q_i . k_j) over the allowed keys, both in the accumulation dtype
    (float64 for float64, float32 otherwise); a query with no allowed key gets out = 0 and lse =
    -inf. Differentiable in q, k and v through both outputs. ``tile_rows`` (b) and
    ``group_cells`` set the tiling (the defaults are the measured best on a CPU).
    The arguments are trusted (the entry point validates them).
    """
    return TiledAttention.apply(q, k, v, window, key_padding_mask, scale, softcap, tile_rows, group_cells)
