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
value got and the value expected, and how many entries differ. Then the likely cause: each
exercise lists typical wrong computations (:class:`Suspect`), and when the answer's result equals
one of them, the message says which mistake gives it. :func:`diagnose` returns that message (None
when the answer is right) instead of printing it. ``EXERCISES`` lists every exercise: its name,
its chapter and the function it asks for.

A *prediction* exercise ("predict the output, then run it") asks for values instead of a
function: the answer is a dict, one entry per quantity, each compared with what the package
computes.
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
    """One call of the answer: its arguments, how to show the call, the expected result.

    For a prediction exercise ``args`` is ``(key,)``: the answer's entry ``key`` is compared.
    """

    call: str  # e.g. "window_pairs(L=8, left=2, right=2)"
    args: tuple
    expected: object
    compare: Compare
    source: str = ""  # where the expected value comes from, e.g. "dense_band_mask(8, 2).sum()"


@dataclass(frozen=True)
class Suspect:
    """A typical wrong computation and the mistake that gives it.

    ``compute`` takes a case's arguments and returns what that mistake produces (None where it
    makes no difference); when a wrong answer's result equals it, the message names ``cause``.
    """

    compute: Callable[..., object]
    cause: str


@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: str
    task: str  # the function to write, in one sentence
    reference: str  # the package function(s) the answer is checked against
    cases: Callable[[], Iterator[Case]]
    suspects: tuple[Suspect, ...] = ()
    prediction: bool = False  # the answer is a dict of values, not a function


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


def agrees(value, got) -> bool:
    """Whether ``got`` equals ``value``: tensors within 1e-8 (NaN where NaN), anything else by ==."""
    if value is None:
        return False
    if isinstance(value, torch.Tensor):
        if not isinstance(got, torch.Tensor) or got.shape != value.shape:
            return False
        got = got.detach().to(value.dtype)
        if value.dtype == torch.bool:
            return bool(torch.equal(got, value))
        return bool(torch.allclose(got, value, rtol=1e-8, atol=1e-8, equal_nan=True))
    if isinstance(value, (tuple, list)) and isinstance(got, (tuple, list)):
        return len(value) == len(got) and all(agrees(a, b) for a, b in zip(value, got))
    if isinstance(got, torch.Tensor):
        return got.numel() == 1 and got.item() == value
    if isinstance(got, bool) != isinstance(value, bool):  # True == 1, but a count is no yes/no
        return False
    return got == value


def likely_cause(exercise: Exercise, case: Case, got) -> str:
    """'. Likely cause: ...' naming every suspect whose result ``got`` equals on this case, else ''."""
    causes = []
    for suspect in exercise.suspects:
        try:
            value = suspect.compute(*case.args)
        except Exception:  # noqa: BLE001  (a suspect that does not apply to this case)
            continue
        if agrees(value, got):
            causes.append(suspect.cause)
    return "".join(f". {'Or' if k else 'Likely cause'}: {cause}" for k, cause in enumerate(causes))


def _answer_to(exercise: Exercise, answer, case: Case):
    """(the answer's result for ``case``, or None and what keeps it from having one)."""
    if not exercise.prediction:
        return answer(*case.args), None
    (key,) = case.args
    if not isinstance(answer, dict):
        return None, f"got {type(answer).__name__}, expected a dict of predictions with the key {key!r}"
    if key not in answer:
        return None, f"the prediction has no entry {key!r} (its keys: {', '.join(map(repr, answer))})"
    got = answer[key]
    if got is Ellipsis or isinstance(got, (list, tuple)) and any(x is Ellipsis for x in got):
        return None, f"{case.call} is ...: fill in your prediction (in place of the ...)"
    return got, None


def run(exercise: Exercise, answer) -> tuple[str | None, int]:
    """(what is wrong with the first wrong case or None, the number of cases checked)."""
    count = 0
    for case in exercise.cases():
        count += 1
        try:
            got, missing = _answer_to(exercise, answer, case)
        except Exception as error:  # the reader's code: any error is a finding
            return f"{case.call} raised {type(error).__name__}: {error}", count
        if missing:
            return missing, count
        if got is None:
            return f"{case.call} returned None: fill in the function body (in place of the ...)", count
        problem = case.compare(case.expected, got)
        if problem:
            source = f" (expected from {case.source})" if case.source else ""
            return f"{case.call}: {problem}{source}{likely_cause(exercise, case, got)}", count
    return None, count


def pair_of_ints(got) -> bool:
    return (isinstance(got, (tuple, list)) and len(got) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in got))
