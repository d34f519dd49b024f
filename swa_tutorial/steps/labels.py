"""Labelled inputs for the worked example, so that every score prints as its own label.

With d_model = 2, take q_i = (i, 1) and k_j = (10, j) for tokens i, j = 1 .. L. Then
q_i . k_j = 10 i + j: the score of token 2's query against token 1's key prints as 21, exactly
the source document's label "21". Run the real algorithm on these and every intermediate tensor shows
which (query, key) pair each number belongs to (for L <= 9, where the labels are unambiguous).
"""

from __future__ import annotations

import torch

from swa_tutorial.core.validation import FLOAT_DTYPES, check_int


def labelled_qkv(seq_len: int = 8, dtype: torch.dtype = torch.float64):
    """q, k, v [1, L, 1, 2] with q_i = (i, 1), k_j = (10, j), v_j = (j, 1), tokens numbered from 1.

    With ``scale=1`` every score q_i . k_j is the label 10 i + j. The values make P x V readable:
    output i is (the attention-weighted average token number, the sum of the weights).
    """
    seq_len = check_int(seq_len, "seq_len")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float64, float32, float16 or bfloat16, got {dtype}")
    pos = torch.arange(1, seq_len + 1, dtype=dtype)
    ones = torch.ones_like(pos)
    q = torch.stack([pos, ones], dim=-1)  # L x 2: (i, 1)
    k = torch.stack([10 * ones, pos], dim=-1)  # L x 2: (10, j)
    v = torch.stack([pos, ones], dim=-1)  # L x 2: (j, 1)
    return tuple(x[None, :, None, :] for x in (q, k, v))  # each 1 x L x 1 x 2
