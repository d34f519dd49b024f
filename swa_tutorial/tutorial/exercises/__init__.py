"""Exercises that check themselves, in the spirit of Sasha Rush's Triton-Puzzles.

``check(name, answer)`` runs a reader's function on inputs of its own and compares each result with
what the package's functions give (the specification, never a stored number); :func:`diagnose`
returns the verdict instead of printing it. :mod:`.framework` holds the grading machinery, and one
module per group of chapters the exercises themselves (:mod:`.dense_and_chunks`, :mod:`.band_and_layer`,
:mod:`.windows_and_longformer`, :mod:`.tiles_and_shards`, :mod:`.real_models`,
:mod:`.receptive_field`); :mod:`.registry` lists them
all by name.
"""

from swa_tutorial.tutorial.exercises.registry import EXERCISES, check, diagnose

__all__ = ["EXERCISES", "check", "diagnose"]
