"""Backends: interchangeable implementations of one sliding-window attention call.

Each backend is a module exposing ``attend(q, k, v, window, key_padding_mask, scale) -> (out,
lse)``: q, k [B, L, H, d] and v [B, L, H, d_v] of one floating dtype and device, any strides;
``window`` an already clipped ``(left, right)`` pair of ints; ``key_padding_mask`` None or bool
[B, L] (True = padding); ``scale`` a finite float. ``out`` [B, L, H, d_v] (contiguous) and ``lse``
[B, L, H] come back in the accumulation dtype (float64 for float64 inputs, float32 otherwise).

* :mod:`swa_tutorial.backends.tiles`: the tiled algorithm in PyTorch, on any device.
"""
