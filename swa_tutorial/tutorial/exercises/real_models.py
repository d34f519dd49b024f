"""The exercises of chapter 20: the package in real models (packed sequences, as a model hands them)."""

from __future__ import annotations

from typing import Iterator

import torch

from swa_tutorial.integrations.hf import cu_seqlens_from_positions
from swa_tutorial.tutorial.exercises.framework import Case, Compare, Exercise, Suspect, generator


def _cu_seqlens_compare(position_ids: torch.Tensor) -> Compare:
    """int32 cu_seqlens: the dtype, the total at the end, then the first wrong start, explained."""

    def compare(expected, got) -> str | None:
        if not isinstance(got, torch.Tensor) or got.dim() != 1:
            return f"got {got!r}, expected a 1D tensor: {expected.tolist()}"
        if got.dtype != torch.int32:
            return f"got dtype {got.dtype}, expected torch.int32 (FlashAttention's cu_seqlens are int32)"
        total = position_ids.numel()
        if len(got) == 0 or int(got[0]) != 0 or int(got[-1]) != total:
            return (f"got {got.tolist()}, expected {expected.tolist()}: cu_seqlens starts at 0 and ends at the "
                    f"number of tokens, {total}")
        if got.tolist() == expected.tolist():
            return None
        L = position_ids.shape[1]
        missed = sorted(set(expected.tolist()) - set(got.tolist()))
        if missed:
            t = missed[0]
            row, column = divmod(t, L)
            why = ("a row's first token starts a document" if column == 0 else
                   f"the position goes {int(position_ids[row, column - 1])} -> {int(position_ids[row, column])}, "
                   f"not up by 1")
            return f"got {got.tolist()}, expected {expected.tolist()}: a document starts at token {t} ({why})"
        t = sorted(set(got.tolist()) - set(expected.tolist()))[0]
        row, column = divmod(t, L)
        return (f"got {got.tolist()}, expected {expected.tolist()}: no document starts at token {t} (the position "
                f"goes {int(position_ids[row, column - 1])} -> {int(position_ids[row, column])}, up by 1)")

    return compare


def _positions(lengths_per_row, first: int = 0) -> torch.Tensor:
    """position_ids [B, L] of rows of documents with the given lengths, each counting from ``first``."""
    return torch.stack([torch.cat([torch.arange(n) + first for n in row]) for row in lengths_per_row])


def _cu_seqlens() -> Iterator[Case]:
    fixed = [
        ("one document", _positions([[6]])),
        ("documents of 3, 2 and 4 tokens", _positions([[3, 2, 4]])),
        ("three documents of 1 token", _positions([[1, 1, 1]])),
        ("two rows", _positions([[3, 2], [5]])),
        ("positions from 2 (a RoBERTa-like model)", _positions([[3, 2]], first=2)),
        ("the second row continues the first's positions", torch.arange(8).reshape(2, 4)),
    ]
    g = generator(0)
    for seed in range(6):
        B = 1 + seed % 3
        rows, L = [], int(torch.randint(4, 12, (1,), generator=g))
        for _ in range(B):
            cuts = sorted(torch.randperm(L - 1, generator=g)[: int(torch.randint(0, 4, (1,), generator=g))] + 1)
            bounds = [0, *[int(c) for c in cuts], L]
            rows.append([b - a for a, b in zip(bounds, bounds[1:])])
        fixed.append((f"random documents, {B} row{'s' * (B > 1)} of {L}", _positions(rows)))
    for what, position_ids in fixed:
        yield Case(f"cu_seqlens(position_ids={position_ids.tolist()}) ({what})", (position_ids,),
                   cu_seqlens_from_positions(position_ids), _cu_seqlens_compare(position_ids),
                   "swa_tutorial.integrations.hf.cu_seqlens_from_positions")


def _cu_seqlens_from(starts: torch.Tensor) -> torch.Tensor:
    """int32 cu_seqlens from a bool of document starts over the flattened tokens."""
    return torch.cat([starts.nonzero().flatten(), torch.tensor([starts.numel()])]).to(torch.int32)


def _starts_at_position_0(position_ids):
    return _cu_seqlens_from(position_ids.flatten() == 0)


def _rows_as_one_sequence(position_ids):
    flat = position_ids.flatten()
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat.diff() != 1
    return _cu_seqlens_from(starts)


EXERCISES = [
    Exercise("cu_seqlens", "20_hugging_face",
             "cu_seqlens(position_ids): FlashAttention's int32 cu_seqlens of the documents packed in position_ids",
             "swa_tutorial.integrations.hf.cu_seqlens_from_positions", _cu_seqlens,
             suspects=(
                 Suspect(_starts_at_position_0, "a document taken to start where the position is 0; positions may "
                         "restart at any first value, so a start is wherever the position does not grow by 1"),
                 Suspect(_rows_as_one_sequence, "the rows read as one sequence; each row is its own, so its first "
                         "token starts a document even when the positions run on across the break"),
             )),
]
