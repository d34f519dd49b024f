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
* ``"triton"``: a fused Triton kernel, forward and backward, that never stores the band
  (:mod:`.triton_kernel`): CUDA tensors, or CPU tensors under Triton's interpreter
  (TRITON_INTERPRET=1). Triton is imported only when it runs.
"""

from __future__ import annotations

import torch

from . import chunks, dense, triton_kernel

BACKENDS = {"chunks": chunks.attend, "dense": dense.attend, "triton": triton_kernel.attend}
CHOICES = ("auto", *BACKENDS)


def check_backend(backend) -> str:
    """Return ``backend`` if it names a backend or "auto", else raise a TypeError/ValueError."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be one of {', '.join(map(repr, CHOICES))}, got {type(backend).__name__}")
    if backend not in CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, CHOICES))}, got {backend!r}")
    return backend


def choose(device: torch.device) -> str:
    """The backend ``"auto"`` runs on ``device``."""
    return "chunks"


def load(backend: str, device: torch.device):
    """The ``attend`` function of ``backend`` ("auto" resolved for ``device``)."""
    return BACKENDS[choose(device) if backend == "auto" else backend]
