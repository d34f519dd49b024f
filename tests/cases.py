"""Random attention problems for the property tests: shapes, windows, padding masks and tensors.

A :class:`Case` is drawn by hypothesis (so failures shrink and print) and makes its tensors from
its own seed, so a case is cheap to draw and reproducible from its printout alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from swa_tutorial import dense_band_mask

HEAD_DIMS = (1, 2, 3, 16, 64)
PADDINGS = ("none", "random", "tail", "gap", "empty_row")


@st.composite
def lengths_and_windows(draw, max_len: int = 300) -> tuple[int, int]:
    """(L, w) from each regime the chunking must handle: L < 2w, L = 2w, L a multiple of w,
    L not a multiple of w, and a window as wide as the sequence or wider."""
    regime = draw(st.sampled_from(("short", "two_windows", "multiple", "ragged", "wide")))
    if regime == "wide":  # w >= L - 1: every key is in every window (ordinary dense attention)
        L = draw(st.integers(1, max_len))
        return L, max(1, L - 1) + draw(st.integers(0, 20))
    if regime == "short":  # 1 <= L < 2w
        w = draw(st.integers(1, max_len // 2))
        return draw(st.integers(1, 2 * w - 1)), w
    if regime == "two_windows":  # L = 2w: exactly one chunk
        w = draw(st.integers(1, max_len // 2))
        return 2 * w, w
    w_min = 2 if regime == "ragged" else 1
    w = draw(st.one_of(st.integers(w_min, 8), st.integers(w_min, max_len // 3)))  # many chunks or few
    blocks = draw(st.integers(3 if regime == "multiple" else 2, max_len // w - (regime == "ragged")))
    return blocks * w + (draw(st.integers(1, w - 1)) if regime == "ragged" else 0), w


@dataclass(frozen=True)
class Case:
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    value_dim: int
    window: object  # an int w, or a pair (left, right) of ints or None
    padding: str  # one of PADDINGS
    scale: float | None
    seed: int
    dilation: object = 1  # an int, or one int per head

    def tensors(self, dtype: torch.dtype = torch.float64):
        """q, k [B, L, H, d], v [B, L, H, d_v] (standard normal, rounded to dtype) and the key
        padding mask, bool [B, L] or None."""
        g = torch.Generator().manual_seed(self.seed)
        B, L, H = self.batch, self.seq_len, self.heads
        q, k = (torch.randn(B, L, H, self.head_dim, generator=g, dtype=torch.float64) for _ in range(2))
        v = torch.randn(B, L, H, self.value_dim, generator=g, dtype=torch.float64)
        return q.to(dtype), k.to(dtype), v.to(dtype), self._mask(g)

    def kwargs(self, mask) -> dict:
        """The keyword arguments every entry point takes for this case."""
        return dict(key_padding_mask=mask, scale=self.scale, dilation=self.dilation)

    def _mask(self, g: torch.Generator) -> torch.Tensor | None:
        B, L = self.batch, self.seq_len
        w = self.window if isinstance(self.window, int) else max(s or 0 for s in self.window)
        if self.padding == "none":
            return None
        if self.padding == "tail":  # each row's real tokens first; a length of 0 pads the whole row
            real = torch.randint(0, L + 1, (B, 1), generator=g)
            return torch.arange(L) >= real
        density = torch.rand(B, 1, generator=g, dtype=torch.float64)  # from sparse to almost all padding
        mask = torch.rand(B, L, generator=g, dtype=torch.float64) < density
        if self.padding == "gap":  # a run of 2w + 1 padding keys: the queries in its middle see none
            start = int(torch.randint(0, max(1, L - 2 * w), (), generator=g))
            mask[:, start : start + 2 * w + 1] = True
        if self.padding == "empty_row":
            mask[int(torch.randint(0, B, (), generator=g))] = True
        return mask


@st.composite
def cases(draw, max_len: int = 300, head_dims=HEAD_DIMS, max_batch: int = 3, max_heads: int = 4) -> Case:
    """A random attention problem: B in 1..3, H in 1..4, d from HEAD_DIMS, L in 1..max_len."""
    L, w = draw(lengths_and_windows(max_len))
    d = draw(st.sampled_from(head_dims))
    return Case(
        batch=draw(st.integers(1, max_batch)),
        seq_len=L,
        heads=draw(st.integers(1, max_heads)),
        head_dim=d,
        value_dim=draw(st.sampled_from((d, 1, 5))),  # v may have its own head dim
        window=w,
        padding=draw(st.sampled_from(PADDINGS)),
        scale=draw(st.sampled_from((None, None, 1.0, 0.3))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def window_cases(draw, max_len: int = 200, head_dims=HEAD_DIMS, max_batch: int = 3, max_heads: int = 4) -> Case:
    """A random problem with any window: (left, right) from 0 to beyond L (None: unbounded),
    causal ones often, symmetric ints sometimes; a dilation for all heads or one per head."""
    case = draw(cases(max_len, head_dims, max_batch, max_heads))
    L = case.seq_len
    side = st.one_of(st.integers(0, 6), st.integers(0, L + 2), st.none())
    shape = draw(st.sampled_from(("pair", "causal", "int")))
    if shape == "pair":
        window = (draw(side), draw(side))
    elif shape == "causal":
        window = (draw(side), 0)
    else:
        window = draw(st.integers(1, L + 2))
    dilation = draw(
        st.one_of(
            st.just(1),
            st.integers(1, L + 1),
            st.lists(st.integers(1, 4), min_size=case.heads, max_size=case.heads),
        )
    )
    return dataclasses.replace(case, window=window, dilation=dilation)


def blind_queries(seq_len: int, window, key_padding_mask: torch.Tensor | None, dilation: int = 1) -> torch.Tensor:
    """bool [B, L] (B = 1 without a mask): True for a query whose whole window is padding."""
    allowed = dense_band_mask(seq_len, window, dilation=dilation)[None]  # 1 x L x L
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, :]
    return ~allowed.any(dim=-1)


def assert_close64(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    """float64 agreement: every element within ``tol`` (absolute), shapes and dtypes equal."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=tol)


def assert_dropped_and_rescaled(dropped: torch.Tensor, probs: torch.Tensor, p: float, tolerance: float) -> None:
    """Attention dropout seen through one-hot values, where an output row is its probabilities:
    ``dropped`` (with dropout p) keeps a fraction 1 - p of the weights ``probs`` has inside the
    window (within ``tolerance``), each kept one divided by 1 - p, and has none outside it."""
    inside = probs > 0
    kept = dropped[inside] > 0
    assert abs(kept.double().mean().item() - (1 - p)) < tolerance
    torch.testing.assert_close(dropped[inside][kept], probs[inside][kept] / (1 - p))
    assert (dropped[~inside] == 0).all()
