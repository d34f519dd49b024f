"""The exercise of chapter 21: the reach of a stack of causal windows, dilated or not.

``can_reach(windows, dilations, distance)`` is compared, on every distance 0 .. farthest + 2 of
a few small stacks, with :func:`swa_tutorial.tutorial.experiments.reach.reachable_distances`
(the sumset of the layers' offsets). A wrong verdict is explained by where the distance lies:
one past the farthest reach, beyond it, in a gap of a dilated stack, or short of the reach.
"""

from __future__ import annotations

from typing import Iterator

from swa_tutorial.tutorial.exercises.framework import Case, Compare, Exercise
from swa_tutorial.tutorial.experiments.reach import covered, farthest, reachable_distances

# stacks (windows per layer, dilations per layer: an int or one per head), small enough to
# enumerate every distance 0 .. farthest + 2
STACKS = (
    ([4], [1]),
    ([3, 3], [1, 1]),
    ([2, 5, 1], [1, 1, 1]),
    ([4], [2]),
    ([4], [[1, 2]]),
    ([3, 3], [[1, 2], [1, 2]]),
    ([3, 3], [[1, 1, 3], 1]),
    ([2, 2, 2], [[2, 3], [2, 3], [1]]),
    ([5, 2], [[1, 4], [1, 1]]),
    ([0, 3], [1, [1, 2]]),
)


def _cause(windows, dilations, distance, got: bool) -> str:
    """The likely mistake behind a wrong verdict ``got`` on ``distance``."""
    far = farthest(windows, dilations)
    if got and distance == far + 1:
        return ("one too far: a layer moves information at most w x d positions (its farthest "
                "key), so the stack reaches the sum over layers of w x (largest d), no more")
    if got and distance > far:
        return "beyond every chain of hops: no layer moves more than w x d positions"
    if got:
        return (f"{distance} is in a gap: a head with dilation d moves only multiples of d, and "
                f"{distance} is no sum of one such move per layer (every distance up to "
                f"{covered(windows, dilations)} is reachable, not every one beyond)")
    if distance > sum(windows):
        return ("dilation d lets a head move d, 2d, .. w d positions: the farthest reach is the "
                "sum over layers of w x (largest d), and each layer may take its move from any head")
    if distance == sum(windows):
        return ("a causal window of w keys to the left holds key i - w itself: n layers of w reach "
                "n x w back, not n x w - 1")
    return ("every layer can also move 0 positions (the token's own key, the residual stream) or "
            "any offset of any head: a distance is reachable when it is a sum of one offset per layer")


def _verdict(windows, dilations, distance) -> Compare:
    """A bool, equal to the expected one; a wrong one with its likely cause."""

    def compare(expected: bool, got) -> str | None:
        if not isinstance(got, bool):
            return f"got {got!r} ({type(got).__name__}), expected a bool"
        if got != expected:
            return f"got {got}, expected {expected}: {_cause(windows, dilations, distance, got)}"
        return None

    return compare


def _can_reach() -> Iterator[Case]:
    for windows, dilations in STACKS:
        reach = set(reachable_distances(windows, dilations))
        for distance in range(farthest(windows, dilations) + 3):
            yield Case(f"can_reach(windows={windows}, dilations={dilations}, distance={distance})",
                       (windows, dilations, distance), distance in reach, _verdict(windows, dilations, distance))


EXERCISES = [
    Exercise("can_reach", "21_receptive_field",
             "can_reach(windows, dilations, distance): whether the last token of a stack of causal windows "
             "receives information from the token distance positions back",
             "swa_tutorial.tutorial.experiments.reach.reachable_distances", _can_reach),
]
