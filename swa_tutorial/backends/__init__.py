"""Backends: interchangeable algorithms for the same attention, chosen with ``backend=``.

Every backend is a module with one function

    attend(q, k, v, window, key_padding_mask, scale) -> (out, lse)

* q, k [B, L, H, d] and v [B, L, H, d_v]: one dtype (float64, float32, float16 or bfloat16), one
  device, any strides; L, B, H, d, d_v >= 1 (the entry point handles empty sizes).
* window: (left, right), Python ints clipped to 0 .. L - 1: query i attends key j when
  i - left <= j <= i + right and key j is not padding. Dilation is done around the backend, by
  residue classes (``swa_tutorial.attention``).
* key_padding_mask: None or bool [B, L], True = padding. scale: a finite float.
* out [B, L, H, d_v] (contiguous) and lse [B, L, H], in the accumulation dtype (float32 for
  half inputs, float64 for float64): lse is the log-sum-exp of the row's allowed scores; a query
  with no allowed key has out = 0 and lse = -inf. Differentiable in q, k and v through both.

The backends, each tested against the float64 dense reference:

* ``"chunks"``: the book's algorithm, Longformer's overlapping chunks (:mod:`.chunks`);
* ``"dense"``: the whole L x L matrix (:mod:`.dense`), for short sequences;
* ``"tiles"``: the tiled algorithm in PyTorch (:mod:`.tiles`): query tiles against their key
  span, the band never stored, on any device;
* ``"triton"``: a fused Triton kernel, forward and backward, that never stores the band
  (:mod:`.triton_kernel`): CUDA tensors, or CPU tensors under Triton's interpreter
  (TRITON_INTERPRET=1). Triton is imported only when it runs.
"""

from __future__ import annotations

import torch

from . import chunks, dense, tiles, triton_kernel

BACKENDS = {"chunks": chunks.attend, "dense": dense.attend, "tiles": tiles.attend, "triton": triton_kernel.attend}
CHOICES = ("auto", *BACKENDS)


def check_backend(backend) -> str:
    """Return ``backend`` if it names a backend or "auto", else raise a TypeError/ValueError."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be one of {', '.join(map(repr, CHOICES))}, got {type(backend).__name__}")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, CHOICES))}, got {backend!r}")
    return backend


# "auto" on a CPU takes the tiles from this window span (left + right) on; below it the chunks,
# whose few large calls beat the tiles' per-head loop (book/data/cpu-float32-auto.json).
TILES_FROM_SPAN = 256


def choose(device: torch.device, window: tuple[int, int]) -> str:
    """The backend ``"auto"`` runs for a (clipped) ``window`` on ``device``: the fastest exact path
    measured there.

    * CPU: ``"tiles"`` when left + right >= ``TILES_FROM_SPAN`` (at w = 256 the tiles are 2.5 to 4x
      faster than the chunks, forward and backward, and hold a tenth of their memory), else
      ``"chunks"`` (at w = 64 the chunks are twice as fast). The measurement:
      book/data/cpu-float32-auto.json, chapter "Benchmarks".
    * CUDA and anything else: ``"chunks"``, the only path measured on a GPU so far. The Triton
      kernel is tested under Triton's CPU interpreter, not yet timed or run on a GPU: ask for it
      with ``backend="triton"``.
    """
    if device.type == "cpu" and sum(window) >= TILES_FROM_SPAN:
        return "tiles"
    return "chunks"


def _auto(q, k, v, window, key_padding_mask, scale):
    """The ``attend`` of the backend :func:`choose` picks for these inputs."""
    return BACKENDS[choose(q.device, window)](q, k, v, window, key_padding_mask, scale)


def load(backend: str):
    """The ``attend`` function of ``backend``; "auto" chooses per call (:func:`choose`)."""
    return _auto if backend == "auto" else BACKENDS[backend]
