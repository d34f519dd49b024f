"""Exercises that check themselves, in the spirit of Sasha Rush's Triton-Puzzles.

Each exercise asks for one function, named after the package function it rebuilds (or after
the quantity it computes). ``check(name, answer)`` runs ``answer`` on inputs of its own, compares
each result with what the package's functions give (the specification, never a stored number),
and prints what it found::

    from swa_tutorial.tutorial.exercises import check

    def num_chunks(L, w):
        return L // w - 1

    check("num_chunks", num_chunks)  # ✓ num_chunks: right on all 56 cases ...

On the first wrong case it says exactly what is wrong: the call, then the type, the shape, a
copy where a view was asked for, or the first wrong entry, named by its dimensions, with the
value got and the value expected, and how many entries differ. :func:`diagnose` returns that
message (None when the answer is right) instead of printing it. ``EXERCISES`` lists every
exercise: its name, its chapter and the function it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

WIDTH = 78  # messages are wrapped to fit the book's text column

# A comparison returns what is wrong with ``got`` (None when nothing is), given the expected value.
Compare = Callable[[object, object], "str | None"]


@dataclass(frozen=True)
class Case:
    """One call of the answer: its arguments, how to show the call, the expected result."""

    call: str  # e.g. "band_pairs(L=8, w=2)"
    args: tuple
    expected: object
    compare: Compare
    source: str = ""  # where the expected value comes from, e.g. "dense_band_mask(8, 2).sum()"


@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: str
    task: str  # the function to write, in one sentence
    reference: str  # the package function(s) the answer is checked against
    cases: Callable[[], Iterator[Case]]


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator(seed), dtype=torch.float64)


def show(x) -> str:
    """A number as the messages print it."""
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


# ---------------------------------------------------------------------------------------------
# Comparisons.


def same_int(expected, got) -> str | None:
    """``got`` must be the integer ``expected`` (a Python int, or any integer-valued scalar)."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point():
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, int):
        return f"got {got!r} ({type(got).__name__}), expected the int {expected}"
    if got != expected:
        return f"got {got}, expected {expected}"
    return None


def same_ints(expected, got) -> str | None:
    """``got`` must be the tuple or list of integers ``expected``, element by element."""
    if not isinstance(got, (tuple, list)) or len(got) != len(expected):
        return f"got {got!r}, expected {len(expected)} ints: {tuple(expected)!r}"
    for k, (e, g) in enumerate(zip(expected, got)):
        problem = same_int(e, g)
        if problem:
            return f"element {k}: {problem}"
    return None


def same_tensor(dims: tuple[str, ...], *, exact: bool = True, view_of=None) -> Compare:
    """A comparison of tensors whose dimensions are named ``dims`` in the messages ("" for none).

    ``exact``: entries must be equal; otherwise within 1e-10 (float64 inputs). ``view_of``: the
    answer must share the storage of this tensor (a view, not a copy).
    """

    def compare(expected: torch.Tensor, got) -> str | None:
        if not isinstance(got, torch.Tensor):
            return f"got {type(got).__name__}, expected a tensor of shape {list(expected.shape)}"
        if got.shape != expected.shape:
            return (f"got shape {list(got.shape)}, expected {list(expected.shape)} "
                    f"([{', '.join(dims)}])")
        if expected.dtype == torch.bool and got.dtype != torch.bool:
            return f"got dtype {got.dtype}, expected torch.bool"
        if view_of is not None and got.untyped_storage().data_ptr() != view_of.untyped_storage().data_ptr():
            return "got a copy, expected a view of the input (the same memory: no number copied)"
        got_ = got.detach().to(expected.dtype)
        if exact:
            wrong = got_ != expected
        else:
            wrong = ~torch.isclose(got_, expected, rtol=1e-10, atol=1e-10)
        if not wrong.any():
            return None
        index = tuple(int(i) for i in wrong.nonzero()[0])
        where = ", ".join(f"{name} {i}" if name else str(i) for name, i in zip(dims, index))
        count = int(wrong.sum())
        return (f"entry [{where}]: got {show(got_[index])}, expected {show(expected[index])} "
                f"({count} of {expected.numel()} entries differ)")

    return compare


def run(exercise: Exercise, answer) -> tuple[str | None, int]:
    """(what is wrong with the first wrong case or None, the number of cases checked)."""
    count = 0
    for case in exercise.cases():
        count += 1
        try:
            got = answer(*case.args)
        except Exception as error:  # the reader's code: any error is a finding
            return f"{case.call} raised {type(error).__name__}: {error}", count
        if got is None:
            return f"{case.call} returned None: fill in the function body (in place of the ...)", count
        problem = case.compare(case.expected, got)
        if problem:
            source = f" (expected from {case.source})" if case.source else ""
            return f"{case.call}: {problem}{source}", count
    return None, count


def pair_of_ints(got) -> bool:
    return (isinstance(got, (tuple, list)) and len(got) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in got))
