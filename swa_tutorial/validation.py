"""Argument checks shared by every entry point.

Bad input raises a ``TypeError`` (wrong kind of object or dtype) or a ``ValueError`` (wrong value
or shape) whose message names the argument and says what was expected. Nothing here computes.
"""

from __future__ import annotations

import numbers

import torch


def check_window(window) -> int:
    """Return ``window`` as an int, or raise: it must be an integer >= 1 (not a bool)."""
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window must be an int >= 1 (the one-sided window w), got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be an int >= 1 (the one-sided window w), got {window}")
    return int(window)


def check_qkv(q, k, v) -> None:
    """Check that q, k, v are floating tensors [B, L, H, d] on one device with one dtype.

    k must match q exactly; v must match q in B, L and H (its head dim may differ).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape [B, L, H, d], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions [B, L, H, d], got {x.dim()} (shape {tuple(x.shape)})"
            )
    if k.shape != q.shape:
        raise ValueError(f"k must have the same shape as q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must match q in [B, L, H] = {tuple(q.shape[:3])}, got {tuple(v.shape[:3])}"
        )
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have the same dtype as q ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on the same device as q ({q.device}), got {x.device}")
    if q.shape[1] < 1:
        raise ValueError("q, k, v must hold at least one token (L >= 1), got L = 0")


def check_key_padding_mask(mask, batch: int, seq_len: int, device: torch.device) -> None:
    """Check a key padding mask: None, or a bool tensor [B, L] on the inputs' device."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"key_padding_mask must be a bool torch.Tensor [B, L] or None, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must have dtype torch.bool (True = padding), got {mask.dtype}")
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(
            f"key_padding_mask must have shape [B, L] = [{batch}, {seq_len}], got {list(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(f"key_padding_mask must be on the same device as q ({device}), got {mask.device}")


def check_scale(scale, head_dim: int) -> float:
    """Return the softmax scale: ``scale`` as a float, or 1 / sqrt(d) when it is None."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return float(scale)
