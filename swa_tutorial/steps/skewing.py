"""Step 4b: the skew, which turns diagonals into columns, and its inverse for P x V.

Read a row-major matrix with a row stride one element longer than its rows and each row starts
one element further right than the row above: what was a diagonal becomes a column. Padding the
rows first with zeros keeps every read inside its own row, so cells whose diagonal runs off the
matrix read a zero instead of a neighbour's entry. Reading with a row stride one element
*shorter* does the opposite and turns columns back into diagonals (:func:`unskew`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swa_tutorial.core.validation import check_int, check_shape

LIMIT = 2**31 - 1  # |first| and count beyond this only ever ask for reads far outside m


def skew(m: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Diagonals into columns: [..., R, N] -> [..., R, count].

    ``out[..., r, t] = m[..., r, r + first + t]``: column t holds diagonal ``first + t`` of m
    (diagonal k is the entries whose column minus row is k). Entries whose column falls outside
    0 .. N - 1 are zero. When every read stays inside m the result is a view of m (no copy);
    otherwise it is a view of a copy of m's rows, zero-padded just enough and starting at column
    ``first``.

    For a chunk's scores [2w, 2w], ``skew(scores, -w, 2w + 1)`` is the chunk in band layout:
    row x holds the keys x - w .. x + w of query x, one column per offset.
    """
    check_shape(m, "m", "[..., R, N]", exact_rank=False, floating=False)
    R, N = m.shape[-2:]
    first, count = check_int(first, "first", minimum=-LIMIT), check_int(count, "count", minimum=1)
    if first > LIMIT or count > LIMIT:
        raise ValueError(f"first and count must lie within 2**31 - 1 of 0, got first = {first}, count = {count}")
    if first < 0 or R + first + count - 1 > N:  # some reads fall outside m: read a padded copy
        # m's columns from ``first`` on, zeros in front (first < 0) and behind, so that row 0
        # starts at column 0 of the copy: inductor (torch.compile) reads an as_strided view that
        # starts inside a padded copy wrongly (it returned NaN), one that starts at 0 right
        skip, left = min(max(first, 0), N), max(-first, 0)
        kept = m.narrow(-1, skip, N - skip)
        start = F.pad(kept, (left, max(0, R + count - 1 - left - kept.shape[-1])))  # ... x R x >= R + count - 1
    else:
        start = m.narrow(-1, first, N - first)  # a view: row 0 starts at column `first`
    stride = start.stride()
    return start.as_strided(  # (the storage offset is start's own)
        (*start.shape[:-1], count),
        (*stride[:-2], stride[-2] + stride[-1], stride[-1]),  # one element further per row
    )


def unskew(band: torch.Tensor) -> torch.Tensor:
    """Columns into diagonals, the inverse of :func:`skew`: [..., R, n] -> [..., R, R + n - 1].

    ``out[..., r, r + j] = band[..., r, j]``, zero elsewhere. Each row is padded with R zeros,
    the rows are laid end to end and read back with a row stride one shorter, so row r starts r
    places further left and its entries land r columns further right.
    """
    check_shape(band, "band", "[..., R, n]", exact_rank=False, floating=False)
    R, n = band.shape[-2:]
    padded = F.pad(band, (0, R)).flatten(-2)  # ... x R (n + R)
    return padded[..., : R * (R + n - 1)].unflatten(-1, (R, R + n - 1))
