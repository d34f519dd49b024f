"""Backends: interchangeable algorithms for the same attention, chosen with ``backend=``.

This docstring is the backend contract. Every backend is a module with one function

    attend(q, k, v, window, key_padding_mask, scale, softcap) -> (out, lse)

* q [B, L, H, d], k [B, L, H_kv, d] and v [B, L, H_kv, d_v]: one dtype (float64, float32,
  float16 or bfloat16), one device, any strides; L, B, H, H_kv, d, d_v >= 1 (the entry point
  handles empty sizes). Grouped heads: H is a multiple of H_kv and query head h reads key/value
  head h // (H / H_kv); "dense" and "chunks" may repeat k and v to H heads inside, "tiles" and
  "triton" index the key/value head and never materialize repeated k and v.
* Square: queries and keys are one sequence of L tokens. Only ``dense.attend`` also takes
  L_q != L_k (q [B, L_q, ...], k and v [B, L_k, ...], the queries aligned to the end of the keys)
  and a ``dilation=`` keyword; the entry point (``swa_tutorial.attention``) turns every other
  L_q != L_k into a square problem, and does dilation (by residue classes), attention sinks and
  packed sequences around the backends, for all of them alike.
* window: (left, right), Python ints clipped to 0 .. L - 1: query i attends key j when
  i - left <= j <= i + right and key j is not padding.
* key_padding_mask: None or bool [B, L], True = padding. scale: a finite float. softcap: a float
  c >= 0; c > 0 replaces each scaled score s by c tanh(s / c) before the mask (0: no cap).
* out [B, L, H, d_v] (contiguous) and lse [B, L, H], in the accumulation dtype (float32 for
  half inputs, float64 for float64): lse is the log-sum-exp of the row's allowed (capped)
  scores; a query with no allowed key has out = 0 and lse = -inf. Differentiable in q, k and v
  through both; the gradient of k and v sums over the query heads that read them.
* dropout: only "dense" and "chunks" take it, a float p in [0, 1) after softcap
  (``attend(..., softcap, dropout)``): each probability is dropped with probability p and the
  kept ones scaled by 1 / (1 - p), drawn from torch's default generator of the inputs' device;
  lse stays that of the undropped softmax. A call with dropout for another backend runs "chunks"
  instead (with a warning); "auto" picks "chunks".

The backends, each tested against the float64 dense reference:

* ``"chunks"``: the book's algorithm, Longformer's overlapping chunks (:mod:`.chunked`);
* ``"dense"``: the whole L x L matrix (:mod:`.dense`), for short sequences;
* ``"tiles"``: the tiled algorithm in PyTorch (:mod:`.tiles`): query tiles against their key
  span, the band never stored, on any device;
* ``"diagonals"``: the band one diagonal at a time (:mod:`.diagonals`), every shape L plus a
  constant: the one torch.export traces for a dynamic L of any value. The export rule: when
  ``torch.export`` traces L as dynamic, the entry point runs every window there (an unbounded
  side, or dropout, on ``"dense"``), whatever the backend asked for
  (:func:`.diagonals.attend_every_length`);
* ``"triton"``: a fused Triton kernel, forward and backward, that never stores the band
  (:mod:`.triton`): CUDA tensors, or CPU tensors under Triton's interpreter
  (TRITON_INTERPRET=1). Triton is imported only when it runs.
"""

from __future__ import annotations

import warnings

import torch

from swa_tutorial.backends import chunked, dense, diagonals, tiles, triton

BACKENDS = {
    "chunks": chunked.attend,
    "dense": dense.attend,
    "tiles": tiles.attend,
    "diagonals": diagonals.attend,
    "triton": triton.attend,
}
CHOICES = ("auto", *BACKENDS)
# The backends that take dropout; a call with dropout for another runs the first of them.
DROPOUT = ("chunks", "dense")


def check_backend(backend) -> str:
    """Return ``backend`` if it names a backend or "auto", else raise a TypeError/ValueError."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be one of {', '.join(map(repr, CHOICES))}, got {type(backend).__name__}")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, CHOICES))}, got {backend!r}")
    return backend


# "auto" on a CPU takes the tiles when one head's tiles score at least this many cells,
# L (b + left + right), b = tiles.TILE_ROWS; below it the chunks' few large calls beat the tiles'
# loop over heads and tile groups (book/data/cpu-float32-auto-w*.json).
TILES_FROM_CELLS = 2**18


def choose(device: torch.device, seq_len: int, window: tuple[int, int]) -> str:
    """The backend ``"auto"`` runs for L = ``seq_len`` and a clipped ``window`` on ``device``: the
    fastest exact path measured there.

    * CPU: ``"tiles"`` when L (b + left + right) >= ``TILES_FROM_CELLS`` (2^18; b = 64 rows per
      tile), else ``"chunks"``. Measured on a 2-core CPU, float32, B = 1, H = 12, d = 64,
      L = 1024 and 4096, w = 32 to 256 (book/data/cpu-float32-auto-w*.json, the benchmarks
      chapter): at L = 1024 the chunks are about twice as fast for w = 32 and 64 (131k and 197k
      cells), the two tie at w = 128 (328k), and from there on, and at every w at L = 4096, the
      tiles are faster (2.5 to 4x at w = 256) and hold a fraction of the memory.
    * CUDA and anything else: ``"chunks"``. The Triton kernel (``backend="triton"``) has run on
      one GPU, an H200 (torch 2.11, Triton 3.6; ``book/data/gpu-2026-12-04/``, made by
      ``book/data/gpu-run-3.sh``). Against float64 (``gpu3-triton-check*.json``; float64 itself
      compiled only in the rerun, after a fix) every case that ran passed but three: float32
      gradients over their allowance (dv 1.9x and dk 1.2x with grouped heads, dv 1.06x with a
      causal window, both at d = 128), and float16 at L = 1, whose gradient allowance was 0
      (widened after the run, not rerun on a GPU). Timed in bfloat16
      (``kernel-timing-*.json``), it beats SDPA (flash without a window, 0.02 to 0.97x its
      time) but is slower than compiled FlexAttention: 1.08 to 1.44x its time for B = 1,
      H = 12, d = 64, w = 256 (L = 16K to 64K, forward and forward + backward); for
      Mistral's shape (H = 32, H_kv = 8, d = 128, window (4095, 0)) 1.08 to 1.09x in the
      forward, 1.96 to 2.02x with the backward. That run timed neither the chunks nor the tiles,
      so no measurement from one run ranks the kernel against them; "auto" keeps the chunks.
    """
    left, right = window
    if device.type == "cpu" and seq_len * (tiles.TILE_ROWS + left + right) >= TILES_FROM_CELLS:
        return "tiles"
    return "chunks"


def _transformed(*tensors) -> bool:
    """Whether a torch.func transform (vmap, grad, jacrev, ...) wraps any of ``tensors`` (None
    for an absent mask; False while torch.compile traces, which cannot trace this test). A
    transform may wrap k, v or the mask alone (vmap over the values, grad in the keys)."""
    if torch.compiler.is_compiling():
        return False
    return any(x is not None and torch._C._functorch.is_functorch_wrapped_tensor(x) for x in tensors)


# The backends that are plain tensor code, which torch.func transforms see through; the others
# are custom autograd functions without a vmap rule.
TRANSFORMABLE = ("chunks", "dense", "diagonals")


def _run(name, q, k, v, window, key_padding_mask, scale, softcap, dropout):
    """Call backend ``name`` (its ``attend`` takes dropout as an eighth argument, only when > 0)."""
    if dropout:
        return BACKENDS[name](q, k, v, window, key_padding_mask, scale, softcap, dropout)
    return BACKENDS[name](q, k, v, window, key_padding_mask, scale, softcap)


def _auto(q, k, v, window, key_padding_mask, scale, softcap=0.0, dropout=0.0):
    """The ``attend`` of the backend :func:`choose` picks for these inputs, or the chunks when
    they are traced or transformed, or take dropout: the chunks are plain tensor code that
    torch.compile (fullgraph), a static torch.export and vmap see through, and are tested so;
    the tiles loop over a tiling that depends on L, in a custom autograd function. (An export
    with a dynamic L never gets here: the entry point takes the diagonals then.)"""
    traced = torch.compiler.is_compiling() or _transformed(q, k, v, key_padding_mask)
    name = "chunks" if traced or dropout else choose(q.device, q.shape[1], window)
    return _run(name, q, k, v, window, key_padding_mask, scale, softcap, dropout)


def load(backend: str):
    """The ``attend(q, k, v, window, key_padding_mask, scale, softcap, dropout=0.0)`` of
    ``backend``; "auto" chooses per call (:func:`choose`). A call with dropout for a backend
    outside ``DROPOUT`` runs "chunks", with a warning (shown once per backend by Python's default filter). A
    backend outside ``TRANSFORMABLE`` asked for under a torch.func transform raises a
    RuntimeError that says which backends work there."""
    if backend == "auto":
        return _auto

    def attend(q, k, v, window, key_padding_mask, scale, softcap=0.0, dropout=0.0):
        name = backend
        if dropout and name not in DROPOUT:
            warnings.warn(
                f"backend={name!r} does not implement dropout: calls with dropout > 0 run backend='chunks'",
                stacklevel=1,  # one place: Python's default filter shows it once per backend
            )
            name = DROPOUT[0]
        if name not in TRANSFORMABLE and _transformed(q, k, v, key_padding_mask):
            raise RuntimeError(
                f"backend={name!r} does not run under torch.func transforms (vmap, grad, ...); "
                f"use backend='auto' or one of {', '.join(map(repr, TRANSFORMABLE))}"
            )
        return _run(name, q, k, v, window, key_padding_mask, scale, softcap, dropout)

    return attend
