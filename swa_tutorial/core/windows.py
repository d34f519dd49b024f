"""A window: which keys each query attends to, as ``(left, right)`` and a dilation.

Query i attends key j when j - i is a multiple of the dilation d and

    -left * d  <=  j - i  <=  right * d,

both ends inclusive: ``left`` keys before the query, ``right`` after it, and the query's own key,
each d tokens apart. The forms a caller may write:

* an int w >= 1: Longformer's symmetric window, the same as ``(w, w)`` (a band 2w + 1 wide);
* a pair ``(left, right)`` of ints >= 0: FlashAttention's ``window_size`` (when queries and keys
  are one sequence). ``(w, 0)`` is a causal window of w + 1 keys, ``(0, 0)`` the token alone;
  ``None`` for a side means no limit on it, so ``(None, 0)`` is ordinary causal attention;
* ``dilation``: an int d >= 1 for every head, or a sequence of H ints, one per head (the
  Longformer paper gives its heads different dilations).

This module only describes windows; ``swa_tutorial.reference`` attends through them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from swa_tutorial.core.validation import check_int, is_int

Side = Optional[int]
WindowSpec = Union[int, Tuple[Side, Side]]

_WINDOW_FORMS = "an int w >= 1 or a pair (left, right) of ints >= 0 (None for no limit)"
# A negative side is most often FlashAttention's -1 ("no limit"): say where that convention lives.
_FLASH_HABIT = (
    "; FlashAttention's window_size writes no limit as -1, this window as None: convert it with "
    "swa_tutorial.integrations.conventions.from_flash_attn, or call swa_tutorial.flash_attn_func"
)


def check_window(window) -> tuple[Side, Side]:
    """Return the window as ``(left, right)``, or raise a TypeError/ValueError naming ``window``.

    ``w`` becomes ``(w, w)``; a pair is checked side by side (ints >= 0, or None).
    """
    if is_int(window):
        if window < 1:
            raise ValueError(f"window must be {_WINDOW_FORMS}; an int window is one-sided and >= 1, got {window}")
        return int(window), int(window)
    if isinstance(window, (tuple, list)):
        if len(window) != 2:
            raise ValueError(f"window must be {_WINDOW_FORMS}, got a sequence of length {len(window)}")
        sides = []
        for name, side in zip(("left", "right"), window):
            if side is None:
                sides.append(None)
                continue
            if not is_int(side):
                raise TypeError(f"window's {name} must be an int >= 0 or None, got {type(side).__name__}")
            if side < 0:
                raise ValueError(f"window's {name} must be an int >= 0 or None, got {side}{_FLASH_HABIT}")
            sides.append(int(side))
        return sides[0], sides[1]
    raise TypeError(f"window must be {_WINDOW_FORMS}, got {type(window).__name__}")


def check_dilation(dilation, heads: int) -> tuple[int, ...]:
    """Return one dilation per head, or raise a TypeError/ValueError naming ``dilation``.

    ``dilation`` is an int d >= 1 (every head) or a sequence of ``heads`` ints >= 1.
    """
    if is_int(dilation):
        values: Sequence = [dilation] * heads
    elif isinstance(dilation, (tuple, list)):
        values = dilation
        if len(values) != heads:
            raise ValueError(f"dilation must hold one int per head (H = {heads}), got {len(values)} values")
    else:
        raise TypeError(f"dilation must be an int >= 1 or a sequence of H ints >= 1, got {type(dilation).__name__}")
    for d in values:
        if not is_int(d):
            raise TypeError(f"dilation must be made of ints >= 1, got {type(d).__name__}")
        if d < 1:
            raise ValueError(f"dilation must be made of ints >= 1, got {d}")
    return tuple(int(d) for d in values)


def clip_window(window: tuple[Side, Side], reach: int) -> tuple[int, int]:
    """``(left, right)`` with None and every side beyond ``reach`` replaced by ``reach``.

    With ``reach`` = L - 1 (or the number of steps of d that fit in L - 1) a wider side sees no
    more keys, so the clipped window computes the same attention.
    """
    reach = reach if reach > 0 else 0
    # (comparisons rather than min(): a side stays a plain int when the length is symbolic)
    return tuple(reach if side is None or side > reach else side for side in window)  # type: ignore[return-value]


def clip_dilation(dilation: int, seq_len: int) -> int:
    """``dilation``, or L when it is larger: the same attention, with no class that holds nothing.

    Two tokens of L are at most L - 1 apart, so with d >= L only j - i = 0 is a multiple of d:
    every token is alone in its class, for d = L as for any larger d. A larger d would only add
    empty classes (and overflow the index arithmetic for a huge one).
    """
    return dilation if dilation <= seq_len else max(seq_len, 1)


def keys_per_query(window: tuple[Side, Side]) -> int | None:
    """How many keys a query sees away from the ends: left + right + 1 (None if unbounded).

    (Not FlashAttention's ``window_size``, which is the pair ``(left, right)`` itself.)
    """
    left, right = window
    return None if left is None or right is None else left + right + 1


def key_offsets(seq_len, device=None, *, key_len=None) -> torch.Tensor:
    """The key-minus-query offset of every cell: int64 [L, L_k], ``offsets[i, j] = j - p``.

    Query i sits at key position p = i + L_k - L (the queries aligned to the end of the keys,
    FlashAttention's rule; p = i when ``key_len`` = L_k is None or L). Every dense mask over
    queries i and keys j starts from this table.
    """
    keys = torch.arange(seq_len if key_len is None else key_len, device=device)
    queries = keys if key_len is None else torch.arange(seq_len, device=device) + (key_len - seq_len)
    return keys[None, :] - queries[:, None]


def in_window(offset: torch.Tensor, window: tuple[int, int], dilation: int = 1) -> torch.Tensor:
    """Whether a key at ``offset`` = j - p from its query lies in the window: bool, offset's shape.

    True when j - p is a multiple of the dilation d and -left * d <= j - p <= right * d, for a
    checked ``(left, right)`` of ints (no None: clip it first with :func:`clip_window`).
    """
    left, right = window
    if dilation == 1:
        return (offset >= -left) & (offset <= right)
    return (offset % dilation == 0) & (offset >= -left * dilation) & (offset <= right * dilation)


def window_mask(seq_len: int, window, device=None, *, dilation: int = 1, key_len: int | None = None) -> torch.Tensor:
    """The window as a dense boolean matrix, built from index arithmetic: bool [L, L].

    ``mask[i, j]`` is True when query i may attend key j: (j - i) % d == 0 and
    -left * d <= j - i <= right * d (the convention of
    ``torch.nn.functional.scaled_dot_product_attention``: True = attend). ``window`` takes every
    form of the module docstring; ``dilation`` is one int.

    ``key_len`` = L_k: L queries against L_k keys, bool [L, L_k], the queries aligned to the end
    of the keys (FlashAttention's rule): query i sits at key position p = i + L_k - L and the
    window is measured from p (j - p in place of j - i above).
    """
    seq_len = check_int(seq_len, "seq_len")
    key_len = None if key_len is None else check_int(key_len, "key_len")
    (d,) = check_dilation(dilation, 1)
    longest = seq_len if key_len is None else max(seq_len, key_len)  # no two positions further apart
    d = clip_dilation(d, longest)  # no overflow for huge dilations
    window = clip_window(check_window(window), longest)  # nor huge windows
    return offsets_mask(seq_len, window, d, device, key_len=key_len)


def offsets_mask(seq_len, window: tuple[int, int], dilation: int = 1, device=None, *, key_len=None) -> torch.Tensor:
    """:func:`window_mask` for a checked, clipped ``(left, right)``: bool [L, L], no validation.

    With ``key_len`` = L_k (default L) the queries are the last L of L_k positions (aligned to
    the end of the keys, FlashAttention's rule): query i sits at position p = i + L_k - L, and
    ``mask[i, j]`` [L, L_k] is True when (j - p) % d == 0 and -left d <= j - p <= right d.

    For the backends, whose lengths and sides may be symbolic sizes under torch.export.
    """
    return in_window(key_offsets(seq_len, device, key_len=key_len), window, dilation)


def lean_window_mask(seq_len: int, window, device=None) -> torch.Tensor:
    """:func:`window_mask` without dilation, built in its one bool L x L allocation: bool [L, L].

    Two triangles cut off a matrix of ones (``tril_``, ``triu_``), with no int64 table of
    :func:`key_offsets` (8 L^2 bytes) and no comparison results beside it: for a caller that
    counts the mask's memory, as the benchmark does for dense attention. ``window`` takes every
    form of the module docstring.
    """
    seq_len = check_int(seq_len, "seq_len")
    left, right = clip_window(check_window(window), seq_len)
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril_(right).triu_(-left)
