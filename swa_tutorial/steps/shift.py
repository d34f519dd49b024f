"""The shift: an asymmetric window (left, right) as a symmetric one about a shifted diagonal.

Take w = ceil((left + right) / 2) and shift = right - w (so -w <= shift <= w). Query i's keys
i - left .. i + right all lie within (i + shift) - w .. (i + shift) + w, a band of 2w + 1 keys
centred on key i + shift; when left + right is odd the band holds one key more than the window,
and that one diagonal is masked. The chunked algorithm then runs unchanged on keys and values
moved by ``shift`` rows (chapter 12 of the book).
"""

from __future__ import annotations


def symmetric_window(left: int, right: int) -> tuple[int, int]:
    """(w, shift): the symmetric window about a shifted diagonal that holds (left, right)."""
    w = max(1, (left + right + 1) // 2)  # ceil((left + right) / 2), at least 1
    return w, right - w


def shifted_layout(seq_len: int, left: int, right: int) -> tuple[int, int, int, int]:
    """(w, shift, lead, Lp): how the window (left, right) is laid out over L tokens.

    Row r of the queries holds token r - lead and row r of the keys token r - lead + shift
    (zeros where there is no such token): ``lead`` = max(shift, 0) zero rows first, so that the
    keys the first queries need have rows >= 0. Lp, the number of rows, is L + abs(shift) rounded up
    to a multiple of w (more than 2w when L > 2w).
    """
    w, shift = symmetric_window(left, right)
    return w, shift, max(shift, 0), (seq_len + abs(shift) + w - 1) // w * w
