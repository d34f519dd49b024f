"""The receptive-field chapter's exercise, checked the way the book checks every exercise.

``check("can_reach", answer)`` calls ``answer(windows, dilations, distance)`` on stacks of its
own and compares each result with :func:`.reach.reachable_distances` (the sumset of the layers'
offsets). It prints a tick and the number of cases, or the first wrong case, the value got and
expected, and the likely cause::

    from swa_tutorial.tutorial.experiments.exercises import check

    def can_reach(windows, dilations, distance):
        ...

    check("can_reach", can_reach)
"""

from __future__ import annotations

import textwrap

from .reach import covered, farthest, reachable_distances

WIDTH = 78  # messages are wrapped to fit the book's text column

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


def cases():
    """(windows, dilations, distance, expected) for every distance 0 .. farthest + 2 of each stack."""
    for windows, dilations in STACKS:
        reach = set(reachable_distances(windows, dilations))
        for distance in range(farthest(windows, dilations) + 3):
            yield windows, dilations, distance, distance in reach


def _cause(windows, dilations, distance, got) -> str:
    """The likely mistake behind a wrong answer."""
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


def diagnose(name: str, answer) -> str | None:
    """What is wrong with ``answer`` (None when it is right on every case)."""
    return _run(name, answer)[0]


def _run(name: str, answer) -> tuple[str | None, int]:
    if name != "can_reach":
        raise ValueError(f"no exercise named {name!r}; the chapter's exercise is 'can_reach'")
    count = 0
    for windows, dilations, distance, expected in cases():
        count += 1
        call = f"can_reach(windows={windows}, dilations={dilations}, distance={distance})"
        try:
            got = answer(windows, dilations, distance)
        except Exception as error:  # noqa: BLE001  (the reader's code: any error is a finding)
            return f"{call} raised {type(error).__name__}: {error}", count
        if got is None:
            return f"{call} returned None: fill in the function body (in place of the ...)", count
        if not isinstance(got, bool):
            return f"{call}: got {got!r} ({type(got).__name__}), expected a bool", count
        if got != expected:
            return f"{call}: got {got}, expected {expected}: {_cause(windows, dilations, distance, got)}", count
    return None, count


def check(name: str, answer) -> None:
    """Run the exercise on ``answer``; print a tick and the number of cases, or what is wrong."""
    problem, count = _run(name, answer)
    if problem:
        message = f"✗ {problem}"
    else:
        message = (f"✓ {name}: right on all {count} cases (checked against "
                   "swa_tutorial.tutorial.experiments.reach.reachable_distances)")
    print(textwrap.fill(message, WIDTH, subsequent_indent="  "))
