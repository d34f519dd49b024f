"""Argument checks shared by every entry point.

Bad input raises a ``TypeError`` (wrong kind of object or dtype) or a ``ValueError`` (wrong value
or shape) whose message names the argument and says what was expected. Nothing here computes.
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def is_int(x) -> bool:
    """True for a Python or NumPy integer, False for a bool (an int to Python) or anything else."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_real(x) -> bool:
    """True for a Python or NumPy real number (ints included), False for a bool or anything else."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_int(value, name: str, minimum: int = 0) -> int:
    """Return ``value`` as an int, or raise: it must be an integer >= ``minimum`` (not a bool).

    A symbolic size (``torch.SymInt``, under torch.export or torch.compile with dynamic shapes)
    is accepted as it is.
    """
    if isinstance(value, torch.SymInt):
        return value
    if not is_int(value):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_chunk_window(window) -> int:
    """The one-sided w of the chunk steps: an int >= 1 (the entry point takes every window form)."""
    if not is_int(window):
        raise TypeError(f"window must be an int >= 1 (the one-sided window w), got {type(window).__name__}")
    if window < 1:
        raise ValueError(f"window must be an int >= 1 (the one-sided window w), got {window}")
    return int(window)


def check_tensor(x, name: str, dims: str) -> None:
    """``x`` must be a strided (dense, not quantized) floating tensor of a supported dtype.

    ``dims`` names the expected shape in messages, e.g. "[B, L, H, d]".
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(x).__name__}")
    if x.layout != torch.strided or x.is_nested:
        kind = "a nested tensor" if x.is_nested else f"layout {x.layout}"
        raise TypeError(f"{name} must be a dense (strided) tensor, got {kind}")
    if x.is_quantized:
        raise TypeError(f"{name} must be a floating-point tensor, got the quantized dtype {x.dtype}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float64, float32, float16 or bfloat16, got dtype {x.dtype}")


def check_shape(x, name: str, dims: str, *, dtype=None, exact_rank: bool = True, floating: bool = True) -> None:
    """``x`` must be a tensor with the dims named in ``dims`` (e.g. "[B*H, L, d]").

    With ``exact_rank`` the rank must equal the number of names; otherwise at least the number of
    names after a leading "...". ``dtype`` fixes the dtype (e.g. torch.bool); else a floating
    ``x`` must have a supported dtype (``floating=False`` accepts any dtype).
    """
    names = [n.strip() for n in dims.strip("[]").split(",")]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {dims}, got {type(x).__name__}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype}")
    if dtype is None and floating:
        check_tensor(x, name, dims)
    rank = len(names) - (names[0] == "...")
    if (x.dim() != rank) if exact_rank else (x.dim() < rank):
        expected = rank if exact_rank else f"at least {rank}"
        raise ValueError(f"{name} must have {expected} dimensions {dims}, got {x.dim()} (shape {tuple(x.shape)})")


def check_band_width(band: torch.Tensor, name: str) -> int:
    """w of a band [..., L, 2w + 1] (w >= 1), or a ValueError naming ``name``."""
    width = band.shape[-1]
    if width % 2 == 0 or width < 3:
        raise ValueError(f"{name} must have an odd width 2w + 1 >= 3 in its last dim, got {width}")
    return (width - 1) // 2


def check_qkv(q, k, v) -> None:
    """Check that q, k, v are floating tensors [B, L, H, d] on one device with one dtype.

    k must match q exactly; v must match q in B, L and H (its head dim may differ). Any size may
    be 0 (the result is then empty, or for d = 0 the plain average of the window's values).
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_tensor(x, name, "[B, L, H, d]")
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
    _check_dtypes_and_devices(q, k, v)


def check_grouped_qkv(q, k, v, *, packed: bool = False) -> None:
    """Check q [B, L_q, H, d], k [B, L_k, H_kv, d], v [B, L_k, H_kv, d_v]: one dtype, one device.

    Grouped heads: H a multiple of H_kv (query head h reads kv head h // (H / H_kv)); L_q may
    differ from L_k. ``packed``: the inputs of packed sequences, without the batch dim:
    q [T_q, H, d], k [T_k, H_kv, d], v [T_k, H_kv, d_v]. Any size may be 0 (H_kv only with H).
    """
    shapes = ("[T_q, H, d]", "[T_k, H_kv, d]", "[T_k, H_kv, d_v]") if packed else (
        "[B, L_q, H, d]", "[B, L_k, H_kv, d]", "[B, L_k, H_kv, d_v]")
    for (name, x), dims in zip((("q", q), ("k", k), ("v", v)), shapes):
        check_tensor(x, name, dims)
        rank = 3 if packed else 4
        if x.dim() != rank:
            why = " (packed sequences: cu_seqlens_q and cu_seqlens_k are given)" if packed else ""
            raise ValueError(f"{name} must have {rank} dimensions {dims}{why}, got {x.dim()} (shape {tuple(x.shape)})")
    if not packed and k.shape[0] != q.shape[0]:
        raise ValueError(f"k must have q's batch size B = {q.shape[0]}, got {k.shape[0]} (k {tuple(k.shape)})")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k must have q's head dim d = {q.shape[-1]}, got {k.shape[-1]} (k {tuple(k.shape)})")
    heads, kv_heads = q.shape[-2], k.shape[-2]
    if (heads % kv_heads if kv_heads else heads):
        raise ValueError(
            f"k's heads H_kv = {kv_heads} must divide q's heads H = {heads} (grouped heads: query head h "
            f"reads key/value head h // (H / H_kv))"
        )
    if v.shape[:-1] != k.shape[:-1]:
        dims = shapes[1].rsplit(",", 1)[0] + "]"
        raise ValueError(f"v must match k in {dims} = {tuple(k.shape[:-1])}, got {tuple(v.shape[:-1])}")
    _check_dtypes_and_devices(q, k, v)


def _check_dtypes_and_devices(q, k, v) -> None:
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} must have the same dtype as q ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on the same device as q ({q.device}), got {x.device}")


def _real(value, name: str, expected: str) -> float:
    """``value`` as a float, or a TypeError naming ``name`` (bools and tensors are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    return float(value)


def check_softcap(softcap) -> float:
    """The logit cap c: a finite real >= 0 (0 = none); the scores become c tanh(s / c)."""
    value = _real(softcap, "softcap", "a real number >= 0 (0 = no cap)")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"softcap must be a finite real number >= 0 (0 = no cap), got {softcap}")
    return value


def check_dropout(dropout, name: str = "dropout") -> float:
    """The attention dropout probability p: a real in [0, 1) (0 = no dropout). ``name``: the
    argument's name in errors (``dropout_p`` in FlashAttention's call)."""
    value = _real(dropout, name, "a probability in [0, 1)")
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be a probability in [0, 1), got {dropout}")
    return value


def check_sinks(sinks, heads: int, device: torch.device) -> None:
    """None, or the attention sinks: a floating tensor [H] (one logit per query head) on ``device``.

    Any of the four floating dtypes, whatever q's: the sinks join the softmax in the accumulation
    dtype, so float32 sinks beside bfloat16 q (a checkpoint keeping them in full precision) lose
    nothing, and bfloat16 sinks beside float32 q are exactly their bfloat16 values. Other dtypes
    (integers, bool, complex) are refused."""
    if sinks is None:
        return
    check_tensor(sinks, "sinks", "[H]")
    if tuple(sinks.shape) != (heads,):
        raise ValueError(f"sinks must have shape [H] = [{heads}] (one logit per query head), got {list(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"sinks must be on the same device as q ({device}), got {sinks.device}")


def check_key_padding_mask(mask, batch: int, seq_len: int, device: torch.device) -> None:
    """Check a key padding mask: None, or a bool tensor [B, L] on the inputs' device."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"key_padding_mask must be a bool torch.Tensor [B, L] or None, got {type(mask).__name__}"
        )
    check_token_mask(mask, "key_padding_mask", "True = padding", batch, seq_len, device)


def check_token_mask(mask, name: str, meaning: str, batch: int, seq_len: int, device: torch.device) -> None:
    """Check a mask over the tokens: a bool tensor [B, L] on the inputs' device.

    ``meaning`` says what True marks (e.g. "True = padding"); the messages name ``name``.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool torch.Tensor [B, L] ({meaning}), got {type(mask).__name__}")
    if mask.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {mask.layout}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool ({meaning}), got {mask.dtype}")
    if tuple(mask.shape) != (batch, seq_len):
        raise ValueError(f"{name} must have shape [B, L] = [{batch}, {seq_len}], got {list(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} must be on the same device as q ({device}), got {mask.device}")


def check_like(x, name: str, like: torch.Tensor, like_name: str) -> None:
    """``x`` must be a floating tensor with the shape, dtype and device of ``like`` (named ``like_name``)."""
    check_tensor(x, name, f"the shape of {like_name}")
    if x.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(x.shape)}")
    if x.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {x.dtype}")
    if x.device != like.device:
        raise ValueError(f"{name} must be on the device of {like_name} ({like.device}), got {x.device}")


def check_scale(scale, head_dim: int, dtype: torch.dtype = torch.float64, name: str = "scale") -> float:
    """Return the softmax scale: ``scale`` as a finite float, or 1 / sqrt(d) when it is None.

    With d = 0 every score is 0 whatever the scale; the default is then 1. The scale must be
    finite in ``dtype``, the dtype it is applied in (float32 for float32 and half inputs).
    ``name``: the argument's name in errors (``softmax_scale`` in FlashAttention's call).
    """
    if scale is None:
        return head_dim**-0.5 if head_dim > 0 else 1.0
    if not is_real(scale):
        raise TypeError(f"{name} must be a real number or None, got {type(scale).__name__}")
    try:
        value = float(scale)
    except OverflowError:
        value = float("inf")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {scale}")
    if abs(value) > torch.finfo(dtype).max:
        raise ValueError(f"{name} must be finite in {dtype}, the dtype it is applied in, got {scale}")
    return value
