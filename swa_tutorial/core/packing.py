"""Packed sequences: documents laid end to end in one sequence, and a padded batch of them.

Training often packs documents into one row without padding. FlashAttention's varlen functions
describe such a row by cumulative lengths: ``cu_seqlens`` int32 [n + 1], starting at 0,
non-decreasing, the last entry the number of tokens T, so that document m holds the tokens
``cu_seqlens[m] .. cu_seqlens[m + 1] - 1`` of q [T_q, H, d] (and likewise of k and v with
``cu_seqlens_k``). A document attends only within itself; its queries are aligned to the end of
its own keys.

:class:`Packing` turns such a row into an ordinary batch and back: row m of the batch holds
document m, its queries in the last ``q_lengths[m]`` of L_q = max(q_lengths) rows and its keys
in the last ``k_lengths[m]`` of L_k = max(k_lengths) rows, zeros (and padding keys) in front.
Aligned at the right end, every document has the same offset L_k - L_q between its queries and
its keys, the one the batched attention applies to all rows, and that is exactly its own
L_k(m) - L_q(m) measured from its own first key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swa_tutorial.core.validation import check_int

VARLEN = "FlashAttention's varlen convention"


def document_lengths(cu_seqlens, name: str, tokens: int, device: torch.device) -> tuple[int, ...]:
    """The documents' lengths from ``cu_seqlens`` int32 [n + 1], or a TypeError/ValueError naming
    ``name``: it must start at 0, never decrease and end at ``tokens``, the inputs' T."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor [n_docs + 1] ({VARLEN}), got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{name} must have dtype torch.int32 ({VARLEN}), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0:
        raise ValueError(f"{name} must be a 1-D tensor [n_docs + 1], starting at 0, got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.device != device:
        raise ValueError(f"{name} must be on the same device as q ({device}), got {cu_seqlens.device}")
    ends = cu_seqlens.tolist()
    if ends[0] != 0:
        raise ValueError(f"{name} must start at 0, got {ends[0]}")
    lengths = tuple(b - a for a, b in zip(ends, ends[1:]))
    if any(n < 0 for n in lengths):
        first = next(m for m, n in enumerate(lengths) if n < 0)
        raise ValueError(f"{name} must be non-decreasing, got {ends[first]} then {ends[first + 1]} (entries {first}, {first + 1})")
    if ends[-1] != tokens:
        raise ValueError(f"{name} must end at the number of tokens T = {tokens}, got {ends[-1]}")
    return lengths


def check_max_seqlen(max_seqlen, name: str, lengths: tuple[int, ...]) -> None:
    """None, or an int at least every document's length (FlashAttention's ``max_seqlen``)."""
    if max_seqlen is None:
        return
    check_int(max_seqlen, name)
    longest = max(lengths, default=0)
    if max_seqlen < longest:
        raise ValueError(f"{name} must be at least the longest document's length {longest}, got {max_seqlen}")


def check_packing(q, k, key_padding_mask, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None):
    """The documents of packed q [T_q, ...] and k [T_k, ...] as a :class:`Packing`, checked; None
    when neither cu_seqlens is given (batched inputs, which take no max_seqlen)."""
    if cu_seqlens_q is None and cu_seqlens_k is None:
        for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
            if value is not None:
                raise ValueError(f"{name} is only taken with packed sequences (cu_seqlens_q and cu_seqlens_k), got {value}")
        return None
    for name, value in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if value is None:
            raise ValueError(f"{name} must be given too: packed sequences need both cu_seqlens_q and cu_seqlens_k")
    if key_padding_mask is not None:
        raise ValueError("key_padding_mask must be None with packed sequences (cu_seqlens_q, cu_seqlens_k): "
                         "each document's keys are all real")
    q_lengths = document_lengths(cu_seqlens_q, "cu_seqlens_q", q.shape[0], q.device)
    k_lengths = document_lengths(cu_seqlens_k, "cu_seqlens_k", k.shape[0], q.device)
    if len(q_lengths) != len(k_lengths):
        raise ValueError(f"cu_seqlens_k must describe as many documents as cu_seqlens_q ({len(q_lengths)}), "
                         f"got {len(k_lengths)}")
    check_max_seqlen(max_seqlen_q, "max_seqlen_q", q_lengths)
    check_max_seqlen(max_seqlen_k, "max_seqlen_k", k_lengths)
    return Packing(q_lengths, k_lengths)


def _padded_rows(lengths: tuple[int, ...], width: int, device) -> torch.Tensor:
    """The row of each token in a [n * width] batch, each document right-aligned: int64 [T]."""
    counts = torch.tensor(lengths, dtype=torch.int64, device=device)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)  # T: each token's document
    first_token = torch.cumsum(counts, 0) - counts  # n: each document's first token
    place = torch.arange(doc.numel(), device=device) - first_token[doc]  # T: its place in its document
    return doc * width + (width - counts[doc]) + place


@dataclass(frozen=True)
class Packing:
    """How the documents of a packed sequence lie in a right-aligned padded batch."""

    q_lengths: tuple[int, ...]
    k_lengths: tuple[int, ...]

    @property
    def q_len(self) -> int:
        """L_q of the batch: the longest document's queries."""
        return max(self.q_lengths, default=0)

    @property
    def k_len(self) -> int:
        """L_k of the batch: the longest document's keys."""
        return max(self.k_lengths, default=0)

    def pad_queries(self, x: torch.Tensor) -> torch.Tensor:
        """[T_q, ...] -> [n, L_q, ...], each document's queries last in its row, zeros in front."""
        return _pad(x, self.q_lengths, self.q_len)

    def pad_keys(self, x: torch.Tensor) -> torch.Tensor:
        """[T_k, ...] -> [n, L_k, ...], each document's keys (or values) last in its row."""
        return _pad(x, self.k_lengths, self.k_len)

    def key_padding_mask(self, device) -> torch.Tensor:
        """bool [n, L_k]: True for the rows in front of each document's keys (padding)."""
        return torch.arange(self.k_len, device=device) < (self.k_len - torch.tensor(self.k_lengths, device=device))[:, None]

    def unpad_queries(self, x: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`pad_queries` on the real rows: [n, L_q, ...] -> [T_q, ...]."""
        rows = _padded_rows(self.q_lengths, self.q_len, x.device)
        return x.flatten(0, 1).index_select(0, rows)


def _pad(x: torch.Tensor, lengths: tuple[int, ...], width: int) -> torch.Tensor:
    rows = _padded_rows(lengths, width, x.device)
    batch = x.new_zeros(len(lengths) * width, *x.shape[1:]).index_copy(0, rows, x)
    return batch.unflatten(0, (len(lengths), width))
