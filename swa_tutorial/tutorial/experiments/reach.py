"""The receptive field of a stack of causal windows: which distances can reach the last token.

In a layer l whose heads attend keys i - w d, i - (w - 1) d, .., i (a causal window of w keys to
the left, dilated by each head's d), information moves back by one of the offsets

    Delta_l = union over the heads' dilations d of {0, d, 2 d, .., w d}

(0: it stays where it is, through the residual stream or the token's own key). Through the
stack it moves by a sum delta_1 + delta_2 + .. with delta_l in Delta_l, so the distances a stack
can carry are the sumset Delta_1 + Delta_2 + ... Without dilation that is every distance
0 .. layers x w: the receptive field of the Longformer paper (section 3.1). With dilation the
farthest distance grows to the sum over layers of w x (largest d), but not every distance below
it need be reachable: one layer with dilation 2 on every head carries only even distances.
"""

from __future__ import annotations


def _per_head(dilation, heads: int | None) -> list[int]:
    """A layer's dilations as a list, one per head (an int stands for every head)."""
    if isinstance(dilation, bool):
        raise TypeError("dilation must be an int or a list of ints, got bool")
    values = [dilation] if isinstance(dilation, int) else list(dilation)
    if not values or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in values):
        raise ValueError(f"dilation must be ints >= 1, got {dilation!r}")
    return values


def offsets(window: int, dilation=1) -> set[int]:
    """The distances one layer carries: union over heads of {0, d, .., window d}."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0 (keys to the left), got {window!r}")
    return {t * d for d in _per_head(dilation, None) for t in range(window + 1)}


def reachable_distances(windows, dilations=None) -> list[int]:
    """The sorted distances D for which the last token of the stack can see the token D back.

    Args:
        windows: keys to the left, one int per layer (first layer first).
        dilations: one entry per layer, an int or one int per head; None: no dilation.
    """
    windows = list(windows)
    dilations = [1] * len(windows) if dilations is None else list(dilations)
    if len(dilations) != len(windows):
        raise ValueError(f"dilations must have one entry per layer ({len(windows)}), got {len(dilations)}")
    reach = {0}
    for window, dilation in zip(windows, dilations):
        step = offsets(window, dilation)
        reach = {a + b for a in reach for b in step}
    return sorted(reach)


def farthest(windows, dilations=None) -> int:
    """The largest distance the stack carries: sum over layers of window x the largest dilation."""
    return reachable_distances(windows, dilations)[-1]


def covered(windows, dilations=None) -> int:
    """The largest D such that every distance 0 .. D is reachable (no gap below it)."""
    reach = set(reachable_distances(windows, dilations))
    distance = 0
    while distance + 1 in reach:
        distance += 1
    return distance
