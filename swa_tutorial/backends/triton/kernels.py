"""The @triton.jit kernels of :mod:`swa_tutorial.backends.triton.launcher` and their launchers.

Imported only when that backend runs: importing this module imports triton. Whether the kernels
run under Triton's interpreter is fixed here, when they are decorated (TRITON_INTERPRET=1).

Three kernels, each over a grid (tiles, heads, B):

* ``forward_kernel``: a query tile of one query head against its key tiles (of the key/value
  head it reads); online softmax; writes out and lse.
* ``dq_kernel``: the same tiles again; recomputes P from lse; writes dQ.
* ``dkdv_kernel``: a key tile of one key/value head against the query tiles that see it, for
  each of the G query heads that read it in turn; writes dK and dV, sums over those G heads.

Splitting dQ from dK/dV recomputes the scores once more but needs no atomic adds: each program
owns the rows it writes, so the gradients are deterministic and float64 needs no atomics.
Every loop bound comes from a span table (:func:`~swa_tutorial.core.tiling.span_table`). Each
kernel runs its one loop helper over the three parts of its span: partial tiles, full tiles,
partial tiles, with the constexpr MASKED false for the full ones, which then compute no window
mask.

What the helpers pass around, as tuples:

* a *head*: (pointer, row stride, column stride, columns), one head of one batch row of a
  [B, L, heads, n] tensor (:func:`_head`); ``kv`` is the pair of heads (k, v);
* the *band*: (padding pointer, its stride, L, left, right), who may attend whom;
* the *logits*: (scale, softcap) in the accumulation dtype, softcap 0 for none.
"""

from __future__ import annotations

import torch

from swa_tutorial.core.optional import require

require("triton", by=__name__)

import triton
import triton.language as tl

INTERPRETED = bool(triton.knobs.runtime.interpret)
_EMULATE_BFLOAT16 = tl.constexpr(INTERPRETED)  # see _rounded


@triton.jit
def _head(ptr, strides, b, h, num_cols):
    """Head h of batch row b of a [B, L, heads, n] tensor with these strides: a head (above)."""
    return ptr + b * strides[0] + h * strides[2], strides[1], strides[3], num_cols


@triton.jit
def _span(spans_ptr, tile):
    """Row ``tile`` of a span table: (start, full_start, full_end, end), see key_tile_span."""
    row = spans_ptr + 4 * tile
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)


@triton.jit
def _logits(logits_ptr):
    """(scale, softcap), stored in the accumulation dtype."""
    return tl.load(logits_ptr), tl.load(logits_ptr + 1)


@triton.jit
def _load_rows(head, rows, num_rows, BLOCK: tl.constexpr):
    """Rows ``rows`` of a head: [len(rows), BLOCK], zeros outside its num_rows x columns.

    ``rows`` are int64 (rows * row_stride passes 2**31 once L H d does); so are the offsets.
    """
    ptr, row_stride, col_stride, num_cols = head
    cols = tl.arange(0, BLOCK)
    inside = (rows[:, None] < num_rows) & (cols[None, :] < num_cols)
    tile = tl.load(ptr + rows[:, None] * row_stride + cols.to(tl.int64)[None, :] * col_stride, mask=inside, other=0.0)
    if _EMULATE_BFLOAT16 and tile.dtype == tl.bfloat16:
        tile = tile.to(tl.float32)  # exact; see _rounded
    return tile


@triton.jit
def _store_rows(head, rows, num_rows, tile, BLOCK: tl.constexpr):
    """Store ``tile`` [len(rows), BLOCK], rounded to the head's dtype, in its rows inside num_rows x columns."""
    ptr, row_stride, col_stride, num_cols = head
    cols = tl.arange(0, BLOCK)
    inside = (rows[:, None] < num_rows) & (cols[None, :] < num_cols)
    offsets = rows[:, None] * row_stride + cols.to(tl.int64)[None, :] * col_stride
    tl.store(ptr + offsets, _rounded(tile, ptr.dtype.element_ty), mask=inside)


@triton.jit
def _rounded(x, dtype: tl.constexpr):
    """x rounded to ``dtype`` (to nearest, ties to even), for tl.dot or a store.

    Triton's interpreter can neither multiply bfloat16 tiles (its tl.dot multiplies their raw
    bits) nor round to bfloat16 (its cast truncates). There bfloat16 values are held in float32:
    tiles are loaded and widened (exactly), and rounding keeps the upper 16 bits of the float32
    after adding half of the dropped part (ties to even), as the GPU's conversion does.
    """
    if _EMULATE_BFLOAT16 and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _tanh(x):
    """tanh(x) = 1 - 2 / (exp(2x) + 1), in x's dtype: -1 and 1 at the ends, never NaN for finite
    x; its error is absolute (a few units of roundoff), so the capped score's is softcap times that."""
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _allowed(queries, keys, band, MASKED: tl.constexpr, HAS_PADDING: tl.constexpr):
    """Which queries may attend which keys: bool [BLOCK_M, BLOCK_N] (window, sequence end and,
    with HAS_PADDING, padding), or [1, BLOCK_N] (padding only) for a full tile."""
    pad_ptr, pad_stride, seq_len, left, right = band
    if HAS_PADDING:
        is_key = tl.load(pad_ptr + keys * pad_stride, mask=keys < seq_len, other=1)[None, :] == 0
    if MASKED:
        rows = queries[:, None]
        cols = keys[None, :]
        allowed = (cols >= rows - left) & (cols <= rows + right) & (cols < seq_len) & (rows < seq_len)
        if HAS_PADDING:
            allowed = allowed & is_key
    else:
        allowed = is_key
    return allowed


@triton.jit
def _scores(q, k, queries, keys, band, logits, input_dtype: tl.constexpr,
            MASKED: tl.constexpr, HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr):
    """The scores [BLOCK_M, BLOCK_N] in the accumulation dtype and, with SOFTCAP, the cap's slope.

    s = scale q k^T; with SOFTCAP s -> softcap tanh(s / softcap), whose derivative 1 - tanh^2 is
    the slope (taken before masking, so that it is finite where P is 0); then -inf where a query
    may not look. Without SOFTCAP the slope is 1 and unused. For float32 inputs tanh runs in
    float64, so that the capped scores are float32's to within rounding (_tanh's few units of
    roundoff, times softcap, would be several times that); for half inputs the rounding of P to
    their dtype dwarfs it.
    """
    scale, softcap = logits
    s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=scale.dtype) * scale
    slope = 1.0
    if SOFTCAP:
        if input_dtype == tl.float32:
            t = _tanh(s.to(tl.float64) / softcap).to(s.dtype)
        else:
            t = _tanh(s / softcap)
        s = softcap * t
        slope = 1.0 - t * t
    if MASKED or HAS_PADDING:
        s = tl.where(_allowed(queries, keys, band, MASKED, HAS_PADDING), s, float("-inf"))
    return s, slope


@triton.jit
def _sees_a_key(queries, band, first, last, HAS_PADDING: tl.constexpr, BLOCK_N: tl.constexpr):
    """bool [BLOCK_M]: the query may attend at least one key of key tiles first .. last - 1."""
    sees = tl.zeros(queries.shape, dtype=tl.int32)
    for tile in range(first, last):
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        allowed = _allowed(queries, keys, band, True, HAS_PADDING)
        sees = tl.maximum(sees, tl.max(allowed.to(tl.int32), 1))
    return sees > 0


@triton.jit
def _key_tile(q, queries, tile, kv, band, logits, MASKED: tl.constexpr, HAS_PADDING: tl.constexpr,
              SOFTCAP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Key tile ``tile`` for a query tile: k [BLOCK_N, BLOCK_D], v [BLOCK_N, BLOCK_DV], the
    masked scores s [BLOCK_M, BLOCK_N] and the cap's slope (see _scores)."""
    keys = tile * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k = _load_rows(kv[0], keys, band[2], BLOCK_D)
    v = _load_rows(kv[1], keys, band[2], BLOCK_DV)
    s, slope = _scores(q, k, queries, keys, band, logits, kv[0][0].dtype.element_ty, MASKED, HAS_PADDING, SOFTCAP)
    return k, v, s, slope


@triton.jit
def _forward_tiles(state, q, queries, tiles, kv, band, logits,
                   MASKED: tl.constexpr, HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Fold key tiles tiles[0] .. tiles[1] - 1 into a query tile's running state
    (acc [BLOCK_M, BLOCK_DV], row_max [BLOCK_M], row_sum [BLOCK_M])."""
    acc, row_max, row_sum = state
    for tile in range(tiles[0], tiles[1]):
        _, v, s, _ = _key_tile(q, queries, tile, kv, band, logits, MASKED, HAS_PADDING, SOFTCAP, BLOCK_N, BLOCK_D, BLOCK_DV)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        # a row that has seen no key yet keeps max -inf; subtract 0 instead so exp gives 0, not NaN
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp(s - shift[:, None])  # BLOCK_M x BLOCK_N
        rescale = tl.exp(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(p, 1)
        p = _rounded(p, kv[1][0].dtype.element_ty)
        acc = acc * rescale[:, None] + tl.dot(p, v, input_precision="ieee", out_dtype=acc.dtype)
        row_max = new_max
    return acc, row_max, row_sum


@triton.jit
def forward_kernel(q_ptr, k_ptr, v_ptr, pad_ptr, logits_ptr, spans_ptr, out_ptr, lse_ptr, strides, sizes,
                   HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Grid (query tiles, H, B). strides: those of q, k, v, the padding, out, lse; sizes: (L, left,
    right, d, d_v, G), G = H / H_kv query heads per key/value head."""
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    q_s, k_s, v_s, pad_s, out_s, lse_s = strides
    seq_len, left, right, head_dim, value_dim, group = sizes
    band = (pad_ptr + b * pad_s[0], pad_s[1], seq_len, left, right)
    kv = (_head(k_ptr, k_s, b, h // group, head_dim), _head(v_ptr, v_s, b, h // group, value_dim))
    logits = _logits(logits_ptr)
    queries = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    q = _load_rows(_head(q_ptr, q_s, b, h, head_dim), queries, seq_len, BLOCK_D)  # BLOCK_M x BLOCK_D

    span = _span(spans_ptr, tile)
    state = (tl.zeros([BLOCK_M, BLOCK_DV], dtype=logits[0].dtype), tl.full([BLOCK_M], float("-inf"), dtype=logits[0].dtype),
             tl.zeros([BLOCK_M], dtype=logits[0].dtype))
    for part in tl.static_range(3):  # partial tiles, full tiles (no window mask), partial tiles
        state = _forward_tiles(state, q, queries, (span[part], span[part + 1]), kv, band, logits,
                               part != 1, HAS_PADDING, SOFTCAP, BLOCK_N, BLOCK_D, BLOCK_DV)
    acc, row_max, row_sum = state

    # A row whose maximum is still -inf has no key to attend (output 0, lse -inf), or scored -inf
    # against every key it may attend because of infinite inputs (output 0 / 0 = NaN, as dense
    # attention gives). Tell them apart only when such a row exists.
    blind = row_max == float("-inf")  # the rows past the sequence's end too
    if tl.max((blind & (queries < seq_len)).to(tl.int32), 0) > 0:
        blind = blind & ~_sees_a_key(queries, band, span[0], span[3], HAS_PADDING, BLOCK_N)
    row_sum = tl.where(blind, 1.0, row_sum)
    out = tl.where(blind[:, None], 0.0, acc / row_sum[:, None])
    lse = tl.where(blind, float("-inf"), row_max + tl.log(row_sum))
    _store_rows(_head(out_ptr, out_s, b, h, value_dim), queries, seq_len, out, BLOCK_DV)
    tl.store(lse_ptr + b * lse_s[0] + h * lse_s[2] + queries * lse_s[1], lse, mask=queries < seq_len)


@triton.jit
def _query_rows(q, do, stats, queries, seq_len, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """q, dO (in q's dtype, for tl.dot), lse and D of a query tile; ``stats`` = (lse pointer,
    D pointer, row stride) of one head.

    lse is +inf for a query with no key (lse -inf) and beyond the sequence, so its P = exp(s - lse)
    is 0 there, never exp(-inf + inf) = NaN.
    """
    lse_ptr, row_term_ptr, row_stride = stats
    q_tile = _load_rows(q, queries, seq_len, BLOCK_D)
    do_tile = _rounded(_load_rows(do, queries, seq_len, BLOCK_DV), q[0].dtype.element_ty)
    lse = tl.load(lse_ptr + queries * row_stride, mask=queries < seq_len, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    row_term = tl.load(row_term_ptr + queries * row_stride, mask=queries < seq_len, other=0.0)
    return q_tile, do_tile, lse, row_term


@triton.jit
def _score_gradient(p, dp, row_term, slope, SOFTCAP: tl.constexpr):
    """dS = P (dP - D), the gradient of the (uncapped) scores: times the cap's slope with SOFTCAP."""
    ds = p * (dp - row_term[:, None])
    if SOFTCAP:
        ds = ds * slope
    return ds


@triton.jit
def _dq_tiles(dq, rows, queries, tiles, kv, band, logits,
              MASKED: tl.constexpr, HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Add to dq [BLOCK_M, BLOCK_D] the part of dS K from key tiles tiles[0] .. tiles[1] - 1;
    ``rows`` = (q, dO, lse, D) of the query tile."""
    q, do, lse, row_term = rows
    for tile in range(tiles[0], tiles[1]):
        k, v, s, slope = _key_tile(q, queries, tile, kv, band, logits, MASKED, HAS_PADDING, SOFTCAP, BLOCK_N, BLOCK_D, BLOCK_DV)
        p = tl.exp(s - lse[:, None])  # BLOCK_M x BLOCK_N, the forward's probabilities
        dp = tl.dot(do, tl.trans(v), input_precision="ieee", out_dtype=dq.dtype)
        ds = _rounded(_score_gradient(p, dp, row_term, slope, SOFTCAP), kv[0][0].dtype.element_ty)
        dq += tl.dot(ds, k, input_precision="ieee", out_dtype=dq.dtype)
    return dq


@triton.jit
def dq_kernel(q_ptr, k_ptr, v_ptr, pad_ptr, logits_ptr, spans_ptr, do_ptr, lse_ptr, row_term_ptr, dq_ptr, strides, sizes,
              HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Grid (query tiles, H, B). strides: those of q, k, v, the padding, dO, lse (and D), dq;
    sizes as in forward_kernel."""
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    q_s, k_s, v_s, pad_s, do_s, lse_s, dq_s = strides
    seq_len, left, right, head_dim, value_dim, group = sizes
    band = (pad_ptr + b * pad_s[0], pad_s[1], seq_len, left, right)
    kv = (_head(k_ptr, k_s, b, h // group, head_dim), _head(v_ptr, v_s, b, h // group, value_dim))
    logits = _logits(logits_ptr)
    queries = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    stats = (lse_ptr + b * lse_s[0] + h * lse_s[2], row_term_ptr + b * lse_s[0] + h * lse_s[2], lse_s[1])
    rows = _query_rows(_head(q_ptr, q_s, b, h, head_dim), _head(do_ptr, do_s, b, h, value_dim), stats,
                       queries, seq_len, BLOCK_D, BLOCK_DV)

    span = _span(spans_ptr, tile)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=logits[0].dtype)
    for part in tl.static_range(3):  # partial tiles, full tiles (no window mask), partial tiles
        dq = _dq_tiles(dq, rows, queries, (span[part], span[part + 1]), kv, band, logits,
                       part != 1, HAS_PADDING, SOFTCAP, BLOCK_N, BLOCK_D, BLOCK_DV)
    _store_rows(_head(dq_ptr, dq_s, b, h, head_dim), queries, seq_len, dq * logits[0], BLOCK_D)


@triton.jit
def _dkdv_tiles(grads, k, v, keys, tiles, q, do, stats, band, logits,
                MASKED: tl.constexpr, HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Add to grads = (dk, dv) the parts of dS^T Q and P^T dO from query tiles tiles[0] ..
    tiles[1] - 1 of one query head (q, dO heads and its lse, D ``stats``)."""
    dk, dv = grads
    seq_len = band[2]
    for tile in range(tiles[0], tiles[1]):
        queries = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        q_tile, do_tile, lse, row_term = _query_rows(q, do, stats, queries, seq_len, BLOCK_D, BLOCK_DV)
        s, slope = _scores(q_tile, k, queries, keys, band, logits, q[0].dtype.element_ty, MASKED, HAS_PADDING, SOFTCAP)
        p = tl.exp(s - lse[:, None])  # BLOCK_M x BLOCK_N
        dtype = q[0].dtype.element_ty
        dv += tl.dot(tl.trans(_rounded(p, dtype)), do_tile, input_precision="ieee", out_dtype=dv.dtype)
        dp = tl.dot(do_tile, tl.trans(v), input_precision="ieee", out_dtype=dk.dtype)
        ds = _rounded(_score_gradient(p, dp, row_term, slope, SOFTCAP), dtype)
        dk += tl.dot(tl.trans(ds), q_tile, input_precision="ieee", out_dtype=dk.dtype)
    return dk, dv


@triton.jit
def dkdv_kernel(q_ptr, k_ptr, v_ptr, pad_ptr, logits_ptr, spans_ptr, do_ptr, lse_ptr, row_term_ptr, dk_ptr, dv_ptr,
                strides, sizes, HAS_PADDING: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Grid (key tiles, H_kv, B). strides: those of q, k, v, the padding, dO, lse (and D), dk, dv;
    sizes as in forward_kernel. The G query heads of the key/value head in turn, in order."""
    tile = tl.program_id(0)
    h_kv = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    q_s, k_s, v_s, pad_s, do_s, lse_s, dk_s, dv_s = strides
    seq_len, left, right, head_dim, value_dim, group = sizes
    band = (pad_ptr + b * pad_s[0], pad_s[1], seq_len, left, right)
    logits = _logits(logits_ptr)
    keys = tile * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k = _load_rows(_head(k_ptr, k_s, b, h_kv, head_dim), keys, seq_len, BLOCK_D)  # BLOCK_N x BLOCK_D
    v = _load_rows(_head(v_ptr, v_s, b, h_kv, value_dim), keys, seq_len, BLOCK_DV)

    span = _span(spans_ptr, tile)
    grads = (tl.zeros([BLOCK_N, BLOCK_D], dtype=logits[0].dtype), tl.zeros([BLOCK_N, BLOCK_DV], dtype=logits[0].dtype))
    for h in range(h_kv * group, (h_kv + 1) * group):
        q, do = _head(q_ptr, q_s, b, h, head_dim), _head(do_ptr, do_s, b, h, value_dim)
        stats = (lse_ptr + b * lse_s[0] + h * lse_s[2], row_term_ptr + b * lse_s[0] + h * lse_s[2], lse_s[1])
        for part in tl.static_range(3):  # partial tiles, full tiles (no window mask), partial tiles
            grads = _dkdv_tiles(grads, k, v, keys, (span[part], span[part + 1]), q, do, stats, band, logits,
                                part != 1, HAS_PADDING, SOFTCAP, BLOCK_M, BLOCK_D, BLOCK_DV)
    dk, dv = grads
    _store_rows(_head(dk_ptr, dk_s, b, h_kv, head_dim), keys, seq_len, dk * logits[0], BLOCK_D)
    _store_rows(_head(dv_ptr, dv_s, b, h_kv, value_dim), keys, seq_len, dv, BLOCK_DV)


def _padding(q, mask):
    """The key padding mask as int32 (1 = padding) and its strides; q stands in when there is none.

    Not as bytes: Triton 3.6 fails to compile the float64 kernels (an assertion in its MMAv2
    lowering, seen on an H200) when the mask's tiles are int8.
    """
    if mask is None:
        return q, (0, 0)
    mask = mask.to(torch.int32)
    return mask, mask.stride()


def _dims(q, v):
    """BLOCK_D and BLOCK_DV: the head dims rounded up to a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(q.shape[-1])), max(16, triton.next_power_of_2(v.shape[-1]))


def _constants(q, v, problem):
    """The constexpr keywords and launch options every kernel takes."""
    block_m, block_n, num_warps, num_stages = problem.blocks
    block_d, block_dv = _dims(q, v)
    return dict(HAS_PADDING=problem.mask is not None, SOFTCAP=problem.softcap > 0, BLOCK_M=block_m,
                BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv, num_warps=num_warps, num_stages=num_stages)


def _sizes(q, k, v, problem):
    """(L, left, right, d, d_v, G), G = H / H_kv."""
    return (q.shape[1], problem.left, problem.right, q.shape[-1], v.shape[-1], q.shape[2] // k.shape[2])


def forward(q, k, v, problem):
    """out [B, L, H, d_v] and lse [B, L, H], both in the accumulation dtype."""
    B, L, H, d = q.shape
    out = torch.empty(B, L, H, v.shape[-1], dtype=problem.acc_dtype, device=q.device)
    lse = torch.empty(B, L, H, dtype=problem.acc_dtype, device=q.device)
    pad, pad_strides = _padding(q, problem.mask)
    strides = (q.stride(), k.stride(), v.stride(), pad_strides, out.stride(), lse.stride())
    forward_kernel[(triton.cdiv(L, problem.blocks[0]), H, B)](
        q, k, v, pad, problem.logits, problem.query_spans, out, lse, strides, _sizes(q, k, v, problem),
        **_constants(q, v, problem),
    )
    return out, lse


def backward(q, k, v, grad_out, lse, row_term, problem):
    """dq, dk, dv (the dtypes and shapes of q, k, v; contiguous) from dO and D = rowsum(dO O) - dlse.

    grad_out: [B, L, H, d_v]; lse, row_term: contiguous [B, L, H], the accumulation dtype.
    """
    B, L, H, d = q.shape
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
    pad, pad_strides = _padding(q, problem.mask)
    inputs = (q, k, v, pad, problem.logits)
    strides = (q.stride(), k.stride(), v.stride(), pad_strides, grad_out.stride(), lse.stride())
    sizes, constants = _sizes(q, k, v, problem), _constants(q, v, problem)
    dq_kernel[(triton.cdiv(L, problem.blocks[0]), H, B)](
        *inputs, problem.query_spans, grad_out, lse, row_term, dq, (*strides, dq.stride()), sizes, **constants
    )
    dkdv_kernel[(triton.cdiv(L, problem.blocks[1]), k.shape[2], B)](
        *inputs, problem.key_spans, grad_out, lse, row_term, dk, dv, (*strides, dk.stride(), dv.stride()), sizes,
        **constants,
    )
    return dq, dk, dv
