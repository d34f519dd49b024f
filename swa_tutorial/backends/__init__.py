"""Backends of :func:`swa_tutorial.sliding_window_attention`: one module per algorithm.

Each exposes ``attend(q, k, v, window, key_padding_mask, scale) -> (out, lse)``.
"""
