"""The @triton.jit kernels of :mod:`swa_tutorial.backends.triton.launcher` and their launchers.

Imported only when that backend runs: importing this module imports triton. Whether the kernels
run under Triton's interpreter is fixed here, when they are decorated (TRITON_INTERPRET=1).

Three kernels, each over a grid (tiles, H, B):

* ``forward_kernel``: a query tile against its key tiles; online softmax; writes out and lse.
* ``dq_kernel``: a query tile against the same key tiles; recomputes P from lse; writes dQ.
* ``dkdv_kernel``: a key tile against the query tiles that see it; writes dK and dV.

Splitting dQ from dK/dV recomputes the scores once more but needs no atomic adds: each program
owns the rows it writes, so the gradients are deterministic and float64 needs no atomics.
Every loop bound comes from a span table (:func:`~swa_tutorial.backends.triton.launcher.span_table`):
partial tiles first, then the full ones without a window mask, then partial ones again.
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
def _span(spans_ptr, tile):
    """Row ``tile`` of a span table: (start, full_start, full_end, end), see key_tile_span."""
    row = spans_ptr + 4 * tile
    return tl.load(row), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3)


@triton.jit
def _load_rows(ptr, rows, cols, row_stride, col_stride, num_rows, num_cols):
    """The [len(rows), len(cols)] tile at ``ptr`` (one head of one batch row), zeros outside.

    ``rows`` are int64 (rows * row_stride passes 2**31 once L H d does); so are the offsets.
    """
    inside = (rows[:, None] < num_rows) & (cols[None, :] < num_cols)
    offsets = rows[:, None] * row_stride + cols.to(tl.int64)[None, :] * col_stride
    tile = tl.load(ptr + offsets, mask=inside, other=0.0)
    if _EMULATE_BFLOAT16 and tile.dtype == tl.bfloat16:
        tile = tile.to(tl.float32)  # exact; see _rounded
    return tile


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
def _allowed(queries, keys, pad_ptr, pad_stride, seq_len, left, right,
             WINDOW_MASK: tl.constexpr, HAS_PADDING: tl.constexpr):
    """Which queries may attend which keys: bool [BLOCK_M, BLOCK_N] (window, sequence end and,
    with HAS_PADDING, padding), or [1, BLOCK_N] (padding only) for a full tile."""
    if HAS_PADDING:
        is_key = tl.load(pad_ptr + keys * pad_stride, mask=keys < seq_len, other=1)[None, :] == 0
    if WINDOW_MASK:
        rows = queries[:, None]
        cols = keys[None, :]
        allowed = (cols >= rows - left) & (cols <= rows + right) & (cols < seq_len) & (rows < seq_len)
        if HAS_PADDING:
            allowed = allowed & is_key
    else:
        allowed = is_key
    return allowed


@triton.jit
def _scores(q, k, scale, queries, keys, pad_ptr, pad_stride, seq_len, left, right,
            WINDOW_MASK: tl.constexpr, HAS_PADDING: tl.constexpr):
    """scale * q k^T [BLOCK_M, BLOCK_N] in the accumulation dtype, -inf where a query may not look."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=scale.dtype) * scale
    if WINDOW_MASK or HAS_PADDING:
        allowed = _allowed(queries, keys, pad_ptr, pad_stride, seq_len, left, right, WINDOW_MASK, HAS_PADDING)
        s = tl.where(allowed, s, float("-inf"))
    return s


@triton.jit
def _sees_a_key(queries, pad_ptr, pad_stride, seq_len, left, right, first, last,
                HAS_PADDING: tl.constexpr, BLOCK_N: tl.constexpr):
    """bool [BLOCK_M]: the query may attend at least one key of key tiles first .. last - 1."""
    sees = tl.zeros(queries.shape, dtype=tl.int32)
    for tile in range(first, last):
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        allowed = _allowed(queries, keys, pad_ptr, pad_stride, seq_len, left, right, True, HAS_PADDING)
        sees = tl.maximum(sees, tl.max(allowed.to(tl.int32), 1))
    return sees > 0


@triton.jit
def _key_tile(q, queries, tile, k_ptr, v_ptr, pad_ptr, scale, seq_len, left, right, head_dim, value_dim,
              sk_l, sk_d, sv_l, sv_d, sp_l, WINDOW_MASK: tl.constexpr, HAS_PADDING: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Key tile ``tile`` of a query tile's span: k [BLOCK_N, BLOCK_D], v [BLOCK_N, BLOCK_DV] and
    the masked scores s [BLOCK_M, BLOCK_N]."""
    keys = tile * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k = _load_rows(k_ptr, keys, tl.arange(0, BLOCK_D), sk_l, sk_d, seq_len, head_dim)
    v = _load_rows(v_ptr, keys, tl.arange(0, BLOCK_DV), sv_l, sv_d, seq_len, value_dim)
    s = _scores(q, k, scale, queries, keys, pad_ptr, sp_l, seq_len, left, right, WINDOW_MASK, HAS_PADDING)
    return k, v, s


@triton.jit
def _forward_tiles(acc, row_max, row_sum, q, queries, k_ptr, v_ptr, pad_ptr, scale, first, last,
                   seq_len, left, right, head_dim, value_dim, sk_l, sk_d, sv_l, sv_d, sp_l,
                   WINDOW_MASK: tl.constexpr, HAS_PADDING: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Fold key tiles first .. last - 1 into the running (acc, row_max, row_sum) of a query tile."""
    for tile in range(first, last):
        k, v, s = _key_tile(q, queries, tile, k_ptr, v_ptr, pad_ptr, scale, seq_len, left, right, head_dim, value_dim,
                            sk_l, sk_d, sv_l, sv_d, sp_l, WINDOW_MASK, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        # a row that has seen no key yet keeps max -inf; subtract 0 instead so exp gives 0, not NaN
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp(s - shift[:, None])  # BLOCK_M x BLOCK_N
        rescale = tl.exp(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + tl.dot(_rounded(p, v_ptr.dtype.element_ty), v, input_precision="ieee", out_dtype=acc.dtype)
        row_max = new_max
    return acc, row_max, row_sum


@triton.jit
def forward_kernel(q_ptr, k_ptr, v_ptr, pad_ptr, scale_ptr, spans_ptr, out_ptr, lse_ptr,
                   seq_len, left, right, head_dim, value_dim,
                   sq_b, sq_l, sq_h, sq_d, sk_b, sk_l, sk_h, sk_d, sv_b, sv_l, sv_h, sv_d, sp_b, sp_l,
                   so_b, so_l, so_h, so_d, sl_b, sl_l, sl_h,
                   HAS_PADDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    q_ptr += b * sq_b + h * sq_h
    k_ptr += b * sk_b + h * sk_h
    v_ptr += b * sv_b + h * sv_h
    pad_ptr += b * sp_b
    scale = tl.load(scale_ptr)
    queries = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    q = _load_rows(q_ptr, queries, tl.arange(0, BLOCK_D), sq_l, sq_d, seq_len, head_dim)  # BLOCK_M x BLOCK_D

    start, full_start, full_end, end = _span(spans_ptr, tile)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=scale.dtype)
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=scale.dtype)
    row_sum = tl.zeros([BLOCK_M], dtype=scale.dtype)
    acc, row_max, row_sum = _forward_tiles(acc, row_max, row_sum, q, queries, k_ptr, v_ptr, pad_ptr, scale,
                                           start, full_start, seq_len, left, right, head_dim, value_dim,
                                           sk_l, sk_d, sv_l, sv_d, sp_l, True, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)
    acc, row_max, row_sum = _forward_tiles(acc, row_max, row_sum, q, queries, k_ptr, v_ptr, pad_ptr, scale,
                                           full_start, full_end, seq_len, left, right, head_dim, value_dim,
                                           sk_l, sk_d, sv_l, sv_d, sp_l, False, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)
    acc, row_max, row_sum = _forward_tiles(acc, row_max, row_sum, q, queries, k_ptr, v_ptr, pad_ptr, scale,
                                           full_end, end, seq_len, left, right, head_dim, value_dim,
                                           sk_l, sk_d, sv_l, sv_d, sp_l, True, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)

    # A row whose maximum is still -inf has no key to attend (output 0, lse -inf), or scored -inf
    # against every key it may attend because of infinite inputs (output 0 / 0 = NaN, as dense
    # attention gives). Tell them apart only when such a row exists.
    blind = row_max == float("-inf")  # the rows past the sequence's end too
    if tl.max((blind & (queries < seq_len)).to(tl.int32), 0) > 0:
        blind = blind & ~_sees_a_key(queries, pad_ptr, sp_l, seq_len, left, right, start, end, HAS_PADDING, BLOCK_N)
    row_sum = tl.where(blind, 1.0, row_sum)
    out = tl.where(blind[:, None], 0.0, acc / row_sum[:, None])
    lse = tl.where(blind, float("-inf"), row_max + tl.log(row_sum))
    value_dims = tl.arange(0, BLOCK_DV)
    out_ptrs = out_ptr + b * so_b + h * so_h + queries[:, None] * so_l + value_dims[None, :] * so_d
    tl.store(out_ptrs, out, mask=(queries[:, None] < seq_len) & (value_dims[None, :] < value_dim))
    tl.store(lse_ptr + b * sl_b + h * sl_h + queries * sl_l, lse, mask=queries < seq_len)


@triton.jit
def _dq_tiles(dq, q, do, lse, row_term, queries, k_ptr, v_ptr, pad_ptr, scale, first, last,
              seq_len, left, right, head_dim, value_dim, sk_l, sk_d, sv_l, sv_d, sp_l,
              WINDOW_MASK: tl.constexpr, HAS_PADDING: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Add to dq the part of dQ = dS K from key tiles first .. last - 1 (dS = P (dP - D))."""
    for tile in range(first, last):
        k, v, s = _key_tile(q, queries, tile, k_ptr, v_ptr, pad_ptr, scale, seq_len, left, right, head_dim, value_dim,
                            sk_l, sk_d, sv_l, sv_d, sp_l, WINDOW_MASK, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)
        p = tl.exp(s - lse[:, None])  # BLOCK_M x BLOCK_N, the forward's probabilities
        dp = tl.dot(do, tl.trans(v), input_precision="ieee", out_dtype=dq.dtype)
        ds = p * (dp - row_term[:, None])
        dq += tl.dot(_rounded(ds, k_ptr.dtype.element_ty), k, input_precision="ieee", out_dtype=dq.dtype)
    return dq


@triton.jit
def _load_query_rows(q_ptr, do_ptr, lse_ptr, row_term_ptr, queries, sq_l, sq_d, sd_l, sd_d, sl_l,
                     seq_len, head_dim, value_dim, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """q, dO (in q's dtype, for tl.dot), lse and D of a query tile.

    lse is +inf for a query with no key (lse -inf) and beyond the sequence, so its P = exp(s - lse)
    is 0 there, never exp(-inf + inf) = NaN.
    """
    q = _load_rows(q_ptr, queries, tl.arange(0, BLOCK_D), sq_l, sq_d, seq_len, head_dim)
    do = _load_rows(do_ptr, queries, tl.arange(0, BLOCK_DV), sd_l, sd_d, seq_len, value_dim)
    do = _rounded(do, q_ptr.dtype.element_ty)
    lse = tl.load(lse_ptr + queries * sl_l, mask=queries < seq_len, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse)
    row_term = tl.load(row_term_ptr + queries * sl_l, mask=queries < seq_len, other=0.0)
    return q, do, lse, row_term


@triton.jit
def dq_kernel(q_ptr, k_ptr, v_ptr, pad_ptr, scale_ptr, spans_ptr, do_ptr, lse_ptr, row_term_ptr, dq_ptr,
              seq_len, left, right, head_dim, value_dim,
              sq_b, sq_l, sq_h, sq_d, sk_b, sk_l, sk_h, sk_d, sv_b, sv_l, sv_h, sv_d, sp_b, sp_l,
              sd_b, sd_l, sd_h, sd_d, sl_b, sl_l, sl_h, sg_b, sg_l, sg_h, sg_d,
              HAS_PADDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    k_ptr += b * sk_b + h * sk_h
    v_ptr += b * sv_b + h * sv_h
    pad_ptr += b * sp_b
    scale = tl.load(scale_ptr)
    queries = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    q, do, lse, row_term = _load_query_rows(q_ptr + b * sq_b + h * sq_h, do_ptr + b * sd_b + h * sd_h,
                                            lse_ptr + b * sl_b + h * sl_h, row_term_ptr + b * sl_b + h * sl_h,
                                            queries, sq_l, sq_d, sd_l, sd_d, sl_l, seq_len, head_dim, value_dim,
                                            BLOCK_D, BLOCK_DV)

    start, full_start, full_end, end = _span(spans_ptr, tile)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=scale.dtype)
    dq = _dq_tiles(dq, q, do, lse, row_term, queries, k_ptr, v_ptr, pad_ptr, scale, start, full_start,
                   seq_len, left, right, head_dim, value_dim, sk_l, sk_d, sv_l, sv_d, sp_l,
                   True, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)
    dq = _dq_tiles(dq, q, do, lse, row_term, queries, k_ptr, v_ptr, pad_ptr, scale, full_start, full_end,
                   seq_len, left, right, head_dim, value_dim, sk_l, sk_d, sv_l, sv_d, sp_l,
                   False, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)
    dq = _dq_tiles(dq, q, do, lse, row_term, queries, k_ptr, v_ptr, pad_ptr, scale, full_end, end,
                   seq_len, left, right, head_dim, value_dim, sk_l, sk_d, sv_l, sv_d, sp_l,
                   True, HAS_PADDING, BLOCK_N, BLOCK_D, BLOCK_DV)

    dims = tl.arange(0, BLOCK_D)
    dq_ptrs = dq_ptr + b * sg_b + h * sg_h + queries[:, None] * sg_l + dims[None, :] * sg_d
    tl.store(dq_ptrs, _rounded(dq * scale, dq_ptr.dtype.element_ty),
             mask=(queries[:, None] < seq_len) & (dims[None, :] < head_dim))


@triton.jit
def _dkdv_tiles(dk, dv, k, v, keys, q_ptr, do_ptr, lse_ptr, row_term_ptr, pad_ptr, scale, first, last,
                seq_len, left, right, head_dim, value_dim, sq_l, sq_d, sd_l, sd_d, sl_l, sp_l,
                WINDOW_MASK: tl.constexpr, HAS_PADDING: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Add to dk, dv the parts of dK = dS^T Q and dV = P^T dO from query tiles first .. last - 1."""
    for tile in range(first, last):
        queries = tile * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
        q, do, lse, row_term = _load_query_rows(q_ptr, do_ptr, lse_ptr, row_term_ptr, queries, sq_l, sq_d,
                                                sd_l, sd_d, sl_l, seq_len, head_dim, value_dim, BLOCK_D, BLOCK_DV)
        s = _scores(q, k, scale, queries, keys, pad_ptr, sp_l, seq_len, left, right, WINDOW_MASK, HAS_PADDING)
        p = tl.exp(s - lse[:, None])  # BLOCK_M x BLOCK_N
        dv += tl.dot(tl.trans(_rounded(p, q_ptr.dtype.element_ty)), do, input_precision="ieee", out_dtype=dv.dtype)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee", out_dtype=dk.dtype)
        ds = p * (dp - row_term[:, None])
        dk += tl.dot(tl.trans(_rounded(ds, q_ptr.dtype.element_ty)), q, input_precision="ieee", out_dtype=dk.dtype)
    return dk, dv


@triton.jit
def dkdv_kernel(q_ptr, k_ptr, v_ptr, pad_ptr, scale_ptr, spans_ptr, do_ptr, lse_ptr, row_term_ptr, dk_ptr, dv_ptr,
                seq_len, left, right, head_dim, value_dim,
                sq_b, sq_l, sq_h, sq_d, sk_b, sk_l, sk_h, sk_d, sv_b, sv_l, sv_h, sv_d, sp_b, sp_l,
                sd_b, sd_l, sd_h, sd_d, sl_b, sl_l, sl_h, sg_b, sg_l, sg_h, sg_d, sw_b, sw_l, sw_h, sw_d,
                HAS_PADDING: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    tile = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    q_ptr += b * sq_b + h * sq_h
    do_ptr += b * sd_b + h * sd_h
    lse_ptr += b * sl_b + h * sl_h
    row_term_ptr += b * sl_b + h * sl_h
    pad_ptr += b * sp_b
    scale = tl.load(scale_ptr)
    keys = tile * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    value_dims = tl.arange(0, BLOCK_DV)
    k = _load_rows(k_ptr + b * sk_b + h * sk_h, keys, dims, sk_l, sk_d, seq_len, head_dim)  # BLOCK_N x BLOCK_D
    v = _load_rows(v_ptr + b * sv_b + h * sv_h, keys, value_dims, sv_l, sv_d, seq_len, value_dim)

    start, full_start, full_end, end = _span(spans_ptr, tile)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=scale.dtype)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=scale.dtype)
    dk, dv = _dkdv_tiles(dk, dv, k, v, keys, q_ptr, do_ptr, lse_ptr, row_term_ptr, pad_ptr, scale, start, full_start,
                         seq_len, left, right, head_dim, value_dim, sq_l, sq_d, sd_l, sd_d, sl_l, sp_l,
                         True, HAS_PADDING, BLOCK_M, BLOCK_D, BLOCK_DV)
    dk, dv = _dkdv_tiles(dk, dv, k, v, keys, q_ptr, do_ptr, lse_ptr, row_term_ptr, pad_ptr, scale, full_start, full_end,
                         seq_len, left, right, head_dim, value_dim, sq_l, sq_d, sd_l, sd_d, sl_l, sp_l,
                         False, HAS_PADDING, BLOCK_M, BLOCK_D, BLOCK_DV)
    dk, dv = _dkdv_tiles(dk, dv, k, v, keys, q_ptr, do_ptr, lse_ptr, row_term_ptr, pad_ptr, scale, full_end, end,
                         seq_len, left, right, head_dim, value_dim, sq_l, sq_d, sd_l, sd_d, sl_l, sp_l,
                         True, HAS_PADDING, BLOCK_M, BLOCK_D, BLOCK_DV)

    dk_ptrs = dk_ptr + b * sg_b + h * sg_h + keys[:, None] * sg_l + dims[None, :] * sg_d
    tl.store(dk_ptrs, _rounded(dk * scale, dk_ptr.dtype.element_ty),
             mask=(keys[:, None] < seq_len) & (dims[None, :] < head_dim))
    dv_ptrs = dv_ptr + b * sw_b + h * sw_h + keys[:, None] * sw_l + value_dims[None, :] * sw_d
    tl.store(dv_ptrs, _rounded(dv, dv_ptr.dtype.element_ty),
             mask=(keys[:, None] < seq_len) & (value_dims[None, :] < value_dim))


def _padding(q, mask):
    """The key padding mask as bytes (1 = padding) and its strides; q stands in when there is none."""
    if mask is None:
        return q, 0, 0
    mask = mask.view(torch.uint8)
    return (mask, *mask.stride())


def _dims(q, v):
    """BLOCK_D and BLOCK_DV: the head dims rounded up to a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(q.shape[-1])), max(16, triton.next_power_of_2(v.shape[-1]))


def forward(q, k, v, problem):
    """out [B, L, H, d_v] and lse [B, L, H], both in the accumulation dtype."""
    B, L, H, d = q.shape
    out = torch.empty(B, L, H, v.shape[-1], dtype=problem.acc_dtype, device=q.device)
    lse = torch.empty(B, L, H, dtype=problem.acc_dtype, device=q.device)
    block_m, block_n, num_warps, num_stages = problem.blocks
    block_d, block_dv = _dims(q, v)
    pad = _padding(q, problem.mask)
    forward_kernel[(triton.cdiv(L, block_m), H, B)](
        q, k, v, pad[0], problem.scale, problem.query_spans, out, lse,
        L, problem.left, problem.right, d, v.shape[-1],
        *q.stride(), *k.stride(), *v.stride(), *pad[1:], *out.stride(), *lse.stride(),
        HAS_PADDING=problem.mask is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse


def backward(q, k, v, grad_out, lse, row_term, problem):
    """dq, dk, dv (the dtypes and shapes of q, k, v; contiguous) from dO and D = rowsum(dO O) - dlse.

    grad_out: [B, L, H, d_v]; lse, row_term: contiguous [B, L, H], the accumulation dtype.
    """
    B, L, H, d = q.shape
    dq, dk = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    block_m, block_n, num_warps, num_stages = problem.blocks
    block_d, block_dv = _dims(q, v)
    pad = _padding(q, problem.mask)
    common = dict(HAS_PADDING=problem.mask is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
                  BLOCK_DV=block_dv, num_warps=num_warps, num_stages=num_stages)
    inputs = (q, k, v, pad[0], problem.scale)
    sizes = (L, problem.left, problem.right, d, v.shape[-1])
    strides = (*q.stride(), *k.stride(), *v.stride(), *pad[1:], *grad_out.stride(), *lse.stride())
    dq_kernel[(triton.cdiv(L, block_m), H, B)](
        *inputs, problem.query_spans, grad_out, lse, row_term, dq, *sizes, *strides, *dq.stride(), **common
    )
    dkdv_kernel[(triton.cdiv(L, block_n), H, B)](
        *inputs, problem.key_spans, grad_out, lse, row_term, dk, dv, *sizes, *strides, *dk.stride(), *dv.stride(),
        **common,
    )
    return dq, dk, dv
