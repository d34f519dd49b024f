"""The "triton" backend: a fused sliding-window kernel, forward and backward, the band never stored.

The tiled algorithm of FlashAttention-2 (Dao, 2023, arXiv:2307.08691) restricted to a window:
a program takes BLOCK_M queries of one head and runs over the BLOCK_N-key tiles their windows
reach, keeping for each query row only a running maximum, a running sum and its output
accumulator (the online softmax). Key tiles are of three kinds for a query tile
(:func:`~swa_tutorial.core.tiling.key_tile_span`):

* skipped: no query of the tile may see any of their keys, never loaded;
* full: every query of the tile sees every key, no window mask computed;
* partial: the rest, masked cell by cell (-inf outside the window).

Grouped heads: k and v have H_kv heads, H a multiple of H_kv; query head h reads key/value head
h // (H / H_kv) in place (no repeated k or v is made), and the dK/dV program of a key/value head
sums over its H / H_kv query heads in a fixed order (deterministic, no atomic adds).

softcap c > 0 caps each scaled score s to c tanh(s / c) before the window mask (Gemma 2,
FlashAttention); the backward multiplies the score gradient by the cap's slope 1 - tanh^2.

The forward keeps each row's log-sum-exp (lse) and nothing of size L x w; the backward recomputes
the scores tile by tile. Memory is O(L d) besides the inputs. The backward is a kernel, not a
graph: first derivatives only (a second derivative through it raises a RuntimeError).

Precision: the scores q . k accumulate in float32 (float64 for float64 inputs), the scale and the
cap are applied to them in that dtype, the softmax and the P x V product accumulate in it. For
float16 and bfloat16 inputs the probabilities P (and in the backward dS and dO) are rounded to
the input dtype just before they enter a matrix product, as FlashAttention and PyTorch's flash
kernels do; float32 products use exact float32 arithmetic ("ieee", not TF32).

Triton is imported only when this backend runs. It runs CUDA tensors, or CPU tensors under
Triton's interpreter (the environment variable TRITON_INTERPRET=1 set before the first call).
"""

from __future__ import annotations

import torch

from swa_tutorial.core.precision import accumulation_dtype
from swa_tutorial.core.tiling import span_table

NAME = "triton"
SECOND_ORDER_BACKENDS = ("dense", "chunks", "tiles")  # the backends whose backward is a graph


def launch_config(dtype: torch.dtype, head_dim: int, value_dim: int, interpreted: bool):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for one call.

    Under the interpreter: 16 x 16 tiles (the smallest tl.dot takes), so small tests cross many
    tiles. On a GPU: 64 x 64 tiles for 16-bit inputs, 32 x 32 for float32 and float64, halved
    while the tiles of q, k and v would pass about 160 KiB of shared memory.
    """
    if interpreted:
        return 16, 16, 1, 1
    block = 64 if dtype in (torch.float16, torch.bfloat16) else 32
    padded = max(16, 1 << (max(head_dim, value_dim) - 1).bit_length())
    while block > 16 and 3 * block * padded * dtype.itemsize * 2 > 160 * 1024:
        block //= 2
    return block, block, 4, 2


def load_kernels():
    """The module of @triton.jit kernels, imported (and triton with it) on first use."""
    try:
        from swa_tutorial.backends.triton import kernels
    except ImportError as error:
        raise RuntimeError(
            f"backend {NAME!r} needs the triton package (pip install triton), which failed to import: {error}"
        ) from error
    return kernels


def check_device(q: torch.Tensor, interpreted: bool) -> None:
    """A ValueError unless q is on a device the kernels run on (CUDA, or the CPU when interpreted)."""
    if q.device.type == "cuda" or (q.device.type == "cpu" and interpreted):
        return
    if q.device.type == "cpu":
        raise ValueError(
            f"backend {NAME!r} runs CPU tensors only under Triton's interpreter: set the environment "
            "variable TRITON_INTERPRET=1 before its first call (or move q, k, v to a CUDA device)"
        )
    raise ValueError(f"backend {NAME!r} runs CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got q on {q.device}")


def check_blocks(blocks) -> tuple[int, int, int, int]:
    """``blocks`` as (BLOCK_M, BLOCK_N, num_warps, num_stages), ints: the tile sides powers of two
    of at least 16 (tl.dot's minimum), the warps a power of two, the stages at least 1."""
    if not (isinstance(blocks, (tuple, list)) and len(blocks) == 4 and all(type(x) is int for x in blocks)):
        raise TypeError(f"blocks must be four ints (BLOCK_M, BLOCK_N, num_warps, num_stages), got {blocks!r}")
    block_m, block_n, warps, stages = blocks
    if not all(x >= 16 and x & (x - 1) == 0 for x in (block_m, block_n)):
        raise ValueError(f"blocks: BLOCK_M and BLOCK_N must be powers of two >= 16, got {block_m} and {block_n}")
    if not (warps > 0 and warps & (warps - 1) == 0 and stages >= 1):
        raise ValueError(f"blocks: num_warps must be a power of two and num_stages >= 1, got {warps} and {stages}")
    return tuple(blocks)


class _Problem:
    """What the forward and the backward share: window, padding, logits, tiles and span tables."""

    def __init__(self, q, v, window, key_padding_mask, scale, softcap, interpreted, blocks=None):
        L, d = q.shape[1], q.shape[-1]
        self.left, self.right = window
        self.mask = key_padding_mask
        self.softcap = softcap
        self.blocks = launch_config(q.dtype, d, v.shape[-1], interpreted) if blocks is None else blocks
        block_m, block_n = self.blocks[:2]
        self.acc_dtype = accumulation_dtype(q.dtype)  # of the scores, the softmax, out, lse, scale and softcap
        self.logits = torch.tensor([scale, softcap], dtype=self.acc_dtype, device=q.device)
        self.query_spans = span_table(L, self.left, self.right, block_m, block_n, q.device)  # per query tile
        self.key_spans = span_table(L, self.right, self.left, block_n, block_m, q.device)  # per key tile


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, key_padding_mask, scale, softcap, blocks):
        kernels = load_kernels()
        problem = _Problem(q, v, window, key_padding_mask, scale, softcap, kernels.INTERPRETED, blocks)
        out, lse = kernels.forward(q, k, v, problem)
        ctx.problem = problem
        ctx.save_for_backward(q, k, v, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        # An upstream gradient may be an expanded (zero-stride) view: one contiguous copy, O(L d).
        grad_out = grad_out.contiguous()
        # The row term of dS = P (dP - D): D_i = dO_i . O_i - dlse_i (the lse gradient folded in).
        row_term = (grad_out * out).sum(dim=-1) - grad_lse  # B x L x H
        with torch.no_grad():
            grads = load_kernels().backward(q, k, v, grad_out, lse, row_term.contiguous(), ctx.problem)
        if torch.is_grad_enabled():  # create_graph=True: the gradients must carry a graph
            grads = _FirstDerivativesOnly.apply(*grads, q, k, v, grad_out, grad_lse)
        return *grads, None, None, None, None, None


class _FirstDerivativesOnly(torch.autograd.Function):
    """dq, dk, dv unchanged, attached to what they depend on (q, k, v and the upstream gradients),
    so that differentiating them raises instead of silently dropping the attention's term."""

    @staticmethod
    def forward(ctx, dq, dk, dv, *depends_on):
        return dq.view_as(dq), dk.view_as(dk), dv.view_as(dv)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            f"backend {NAME!r} computes first derivatives only: its backward is a fused kernel, not a "
            "graph, so a second derivative through it (create_graph=True: a gradient penalty, a "
            "Hessian-vector product) cannot be taken; use backend="
            + " or ".join(map(repr, SECOND_ORDER_BACKENDS))
            + ", whose backward is differentiable"
        )


def attend(q, k, v, window, key_padding_mask, scale, softcap=0.0, *, blocks=None):
    """Sliding-window attention and its log-sum-exp through the fused Triton kernel.

    q: [B, L, H, d]; k: [B, L, H_kv, d]; v: [B, L, H_kv, d_v], H a multiple of H_kv (query head h
    reads key/value head h // (H / H_kv)); one dtype among float64, float32, float16, bfloat16;
    any strides. window: (left, right), 0 <= left, right <= L - 1: query i attends keys i - left
    .. i + right that are not padding. key_padding_mask: None or bool [B, L], True = padding.
    scale: a finite float on q . k; softcap: a float >= 0, 0 for none, else each scaled score s
    becomes softcap tanh(s / softcap) before the mask (both applied in the accumulation dtype).

    Returns out [B, L, H, d_v] (contiguous) and lse [B, L, H], both float32 (float64 for float64
    inputs). A query with no key to attend has out = 0, lse = -inf and zero gradients.
    Differentiable in q, k and v through both outputs (first derivatives; the gradients of k and
    v sum over the query heads that read them).

    ``blocks``: (BLOCK_M, BLOCK_N, num_warps, num_stages) for the three kernels instead of
    ``launch_config``'s, for tuning them (``python -m swa_tutorial.bench.kernel_tuning``);
    the result is the same attention whatever the tiles, up to rounding.
    """
    if q.shape[2] % k.shape[2] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"backend {NAME!r}: the heads of q ({q.shape[2]}) must be a multiple of those of k "
            f"({k.shape[2]}), and v must have as many heads as k ({v.shape[2]})"
        )
    kernels = load_kernels()
    check_device(q, kernels.INTERPRETED)
    blocks = None if blocks is None else check_blocks(blocks)
    return _FusedAttention.apply(q, k, v, tuple(window), key_padding_mask, float(scale), float(softcap), blocks)
