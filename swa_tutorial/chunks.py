"""Steps 1 to 4a: the number of chunks, the reshape, the overlapping chunk view, the chunked product.

The sequence is cut into chunks of 2w tokens that overlap by w: chunk c holds tokens
c w .. c w + 2w - 1. Every (query, key) pair of the band |i - j| <= w lies inside some chunk,
so scoring each chunk against itself covers the whole band with C small products instead of
one L x L product.
"""

from __future__ import annotations

import torch

from .validation import check_chunk_window


def num_chunks(seq_len: int, window: int) -> int:
    """The number of overlapping chunks, C = L // w - 1.

    L must be a multiple of w and at least 2w (one whole chunk); the public function pads any
    other length up to such a one first.
    """
    window = check_chunk_window(window)
    if seq_len < 2 * window or seq_len % window:
        raise ValueError(
            f"seq_len must be a multiple of window and at least 2 * window = {2 * window} "
            f"to be cut into chunks, got seq_len = {seq_len} with window = {window}"
        )
    return seq_len // window - 1


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Fold the heads into the batch: [B, L, H, d] -> [B*H, L, d].

    Row b*H + h of the result is head h of batch element b. Heads never interact in attention,
    so from here on each of the B*H rows is an independent single-head problem.
    """
    B, L, H, d = x.shape
    return x.transpose(1, 2).reshape(B * H, L, d)  # B x H x L x d -> BH x L x d


def split_heads(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Undo :func:`merge_heads`: [B*H, L, d] -> [B, L, H, d]."""
    BH, L, d = x.shape
    return x.reshape(batch, BH // batch, L, d).transpose(1, 2)  # B x H x L x d -> B x L x H x d


def chunk(x: torch.Tensor, window: int, size: int | None = None) -> torch.Tensor:
    """The overlapping chunk view: [B*H, L, d] -> [B*H, C, 2w, d], sharing storage with x.

    Chunk c starts w tokens after chunk c - 1, so the view steps w rows of x per chunk and one
    row per token: strides (x.stride(0), w * x.stride(1), x.stride(1), x.stride(2)). No element
    is copied; overlapping chunks read the same memory. ``size`` (default 2w) sets the chunk
    length; the value chunks of P x V use 3w. Then C = (L - size) // w + 1.
    """
    window = check_chunk_window(window)
    size = 2 * window if size is None else size
    BH, L, d = x.shape
    if L < size or (L - size) % window:
        raise ValueError(
            f"x must hold a whole number of chunks of {size} tokens stepping by {window}, got L = {L}"
        )
    count = (L - size) // window + 1
    s_bh, s_l, s_d = x.stride()
    return x.as_strided((BH, count, size, d), (s_bh, window * s_l, s_l, s_d), x.storage_offset())


def chunk_scores(q_chunks: torch.Tensor, k_chunks: torch.Tensor) -> torch.Tensor:
    """The chunked product: every query of a chunk against every key of the same chunk.

    q_chunks, k_chunks: [B*H, C, 2w, d]. Returns [B*H, C, 2w, 2w] with
    ``out[b, c, x, y] = q[c w + x] . k[c w + y]``.
    """
    return torch.einsum("bcxd,bcyd->bcxy", q_chunks, k_chunks)  # BH x C x 2w x 2w
