"""Steps 1 to 4a: the number of chunks, the reshape, the overlapping chunk view, the chunked product.

The sequence is cut into chunks of 2w tokens that overlap by w: chunk c holds tokens
c w .. c w + 2w - 1. Every (query, key) pair of the band |i - j| <= w lies inside some chunk,
so scoring each chunk against itself covers the whole band with C small products instead of
one L x L product.
"""

from __future__ import annotations

import torch

from swa_tutorial.core.validation import check_chunk_window, check_int, check_shape


def num_chunks(seq_len: int, window: int) -> int:
    """The number of overlapping chunks, C = L // w - 1.

    L must be a multiple of w and at least 2w (one whole chunk); the public function pads any
    other length up to such a one first.
    """
    seq_len = check_int(seq_len, "seq_len")
    window = check_chunk_window(window)
    if seq_len < 2 * window or seq_len % window:
        raise ValueError(
            f"seq_len must be a multiple of window and at least 2 * window = {2 * window} "
            f"to be cut into chunks, got seq_len = {seq_len} with window = {window}"
        )
    return seq_len // window - 1


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Fold the heads into the batch: [B, L, H, d] -> [B*H, L, d].

    Row r = b H + h of the result is head h of batch element b. Heads never interact in attention,
    so from here on each of the B*H rows is an independent single-head problem.
    """
    check_shape(x, "x", "[B, L, H, d]")
    B, L, H, d = x.shape
    return x.transpose(1, 2).reshape(B * H, L, d)  # B x H x L x d -> BH x L x d


def split_heads(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Undo :func:`merge_heads`: [B*H, L, d] -> [B, L, H, d]."""
    check_shape(x, "x", "[B*H, L, d]")
    batch = check_int(batch, "batch", minimum=1)
    BH, L, d = x.shape
    if BH % batch:
        raise ValueError(f"batch must divide the merged batch B*H = {BH}, got {batch}")
    return x.reshape(batch, BH // batch, L, d).transpose(1, 2)  # B x H x L x d -> B x L x H x d


def chunk(x: torch.Tensor, window: int, size: int | None = None) -> torch.Tensor:
    """The overlapping chunk view: [B*H, L, d] -> [B*H, C, 2w, d], sharing storage with x.

    Chunk c starts w tokens after chunk c - 1, so the view steps w rows of x per chunk and one
    row per token: strides (x.stride(0), w * x.stride(1), x.stride(1), x.stride(2)), the view
    Longformer's ``_chunk`` builds with ``as_strided``. No element is copied; overlapping chunks
    read the same memory. ``size`` (default 2w) sets the chunk length; the value chunks of
    P x V use 3w. Then C = (L - size) // w + 1.

    The view is made with ``Tensor.unfold`` (a window of ``size`` rows every w rows), which has
    exactly these strides, but whose backward adds up the gradients of overlapping chunks
    whatever x's own strides are, and which vmap understands.

    While torch.compile or torch.export traces (``torch.compiler.is_compiling()``; when ``size``
    is a multiple of w, as 2w and 3w are) the chunks are built as copies instead: chunk c is the
    blocks c, c + 1, ... of w rows, concatenated. With torch 2.13 on the CPU, the code inductor
    generates for ``unfold``'s backward writes the overlapping chunks' gradients from several
    threads at once: with two threads the gradient came out wrong or the process crashed
    (tests/test_edges.py compiles forward and backward).
    The copies' backward adds disjoint slices, and the graph computes the same numbers.
    """
    window = check_chunk_window(window)
    size = 2 * window if size is None else check_int(size, "size", minimum=1)
    check_shape(x, "x", "[B*H, L, d]")
    L = x.shape[1]
    if L < size or (L - size) % window:
        raise ValueError(
            f"x must hold a whole number of chunks of {size} tokens stepping by {window}, got L = {L}"
        )
    if torch.compiler.is_compiling() and size % window == 0:
        blocks = x.reshape(x.shape[0], L // window, window, x.shape[2])  # BH x L/w x w x d
        C = (L - size) // window + 1
        return torch.cat([blocks[:, j : j + C] for j in range(size // window)], dim=2)  # BH x C x size x d
    return x.unfold(1, size, window).transpose(-1, -2)  # BH x C x size x d


def chunk_scores(q_chunks: torch.Tensor, k_chunks: torch.Tensor) -> torch.Tensor:
    """The chunked product: every query of a chunk against every key of the same chunk.

    q_chunks, k_chunks: [B*H, C, 2w, d]. Returns [B*H, C, 2w, 2w] with
    ``out[r, c, x, y] = q[c w + x] . k[c w + y]`` (r the merged row).
    """
    check_shape(q_chunks, "q_chunks", "[B*H, C, 2w, d]")
    check_shape(k_chunks, "k_chunks", "[B*H, C, 2w, d]")
    if q_chunks.shape != k_chunks.shape:
        raise ValueError(f"k_chunks must have the shape of q_chunks {tuple(q_chunks.shape)}, got {tuple(k_chunks.shape)}")
    if k_chunks.dtype != q_chunks.dtype:
        raise TypeError(f"k_chunks must have the dtype of q_chunks ({q_chunks.dtype}), got {k_chunks.dtype}")
    if q_chunks.shape[2] % 2:
        raise ValueError(f"the chunks must be 2w tokens long, an even number, got {q_chunks.shape[2]}")
    return torch.einsum("bcxd,bcyd->bcxy", q_chunks, k_chunks)  # BH x C x 2w x 2w


def padded_length(seq_len: int, window: int) -> int:
    """The length the chunked algorithm runs at: L rounded up to a multiple of w, at least 2w.

    The chunk view needs no more than that (Longformer's own code pads to a multiple of 2w).
    """
    seq_len, window = check_int(seq_len, "seq_len"), check_chunk_window(window)
    return max(2 * window, -(-seq_len // window) * window)
