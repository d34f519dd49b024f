"""Every exercise by name, and the two calls a reader makes: :func:`check` and :func:`diagnose`."""

from __future__ import annotations

import sys
import textwrap

from swa_tutorial.tutorial.exercises import (
    band_and_layer,
    dense_and_chunks,
    real_models,
    receptive_field,
    tiles_and_shards,
    windows_and_longformer,
)
from swa_tutorial.tutorial.exercises.framework import WIDTH, Exercise, run

EXERCISES: dict[str, Exercise] = {
    e.name: e
    for module in (dense_and_chunks, band_and_layer, windows_and_longformer, tiles_and_shards, real_models,
                   receptive_field)
    for e in module.EXERCISES
}


def diagnose(name: str, answer) -> str | None:
    """What is wrong with ``answer`` to exercise ``name``, or None when it is right on every case."""
    return run(find_exercise(name), answer)[0]


def check(name: str, answer) -> None:
    """Run exercise ``name`` on ``answer``; print a tick and the number of cases, or what is wrong.

    It returns nothing, so that a notebook cell ending with it shows the message alone; use
    :func:`diagnose` to get the verdict as a value.
    """
    exercise = find_exercise(name)
    problem, count = run(exercise, answer)
    if problem:
        message = f"✗ {problem}"
    else:
        message = f"✓ {exercise.name}: right on all {count} cases (checked against {exercise.reference})"
    # one write: a notebook then stores the message as one output, not the text and its newline apart
    sys.stdout.write(textwrap.fill(message, WIDTH, subsequent_indent="  ") + "\n")


def find_exercise(name: str) -> Exercise:
    if name not in EXERCISES:
        raise ValueError(f"no exercise named {name!r}; the exercises are {', '.join(EXERCISES)}")
    return EXERCISES[name]
