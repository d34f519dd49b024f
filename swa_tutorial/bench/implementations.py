"""The implementations the benchmark compares, each behind the same two small functions.

Every implementation computes the same thing, sliding-window attention with the one-sided window
w on q, k, v [B, L, H, d], and returns [B, L, H, d]. ``prepare(L, w, device)`` builds what
depends only on the shape (the dense band mask, FlexAttention's block mask), once, as a model
would cache it across layers: its time is not counted, its memory is. ``attend(q, k, v, w,
state)`` is the call that is timed. ``load(H, d, w)`` runs before anything is measured: imports
and objects that are no part of the computation (Hugging Face's layer module).

One implementation computes something else on purpose: ``dense_sdpa_nomask`` is SDPA without a
mask, full attention (every query sees every key). It is no way to compute the band; it shows
what dense SDPA itself costs without its L x L mask (the least memory dense attention can need),
and it is checked against float64 full attention.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.core.windows import lean_window_mask
from swa_tutorial.reference import loop_attention


@dataclass(frozen=True)
class Implementation:
    """One way to compute sliding-window attention, as the benchmark sees it."""

    name: str
    description: str
    attend: Callable  # (q, k, v, w, state) -> [B, L, H, d]
    prepare: Callable = lambda L, w, device: None  # (L, w, device) -> state
    load: Callable = lambda H, d, w: None  # (H, d, w) -> None, before any measurement
    compiled: bool = False  # the first call compiles; its time is reported separately
    full_attention: bool = False  # computes attention to every key (no window): checked as such
    sdpa_backend: Callable | None = None  # (q, k, v, state) -> the SDPA backend the call runs
    needs: str | None = None  # a module that must be importable
    whole_chunks: bool = False  # L must be a multiple of 2w
    cuda_only: bool = False  # runs only on a CUDA device (Triton's CPU interpreter is no benchmark)


def _heads_first(x):  # [B, L, H, d] -> [B, H, L, d], a view
    return x.transpose(1, 2)


def _dense_sdpa(q, k, v, w, mask):
    out = F.scaled_dot_product_attention(*map(_heads_first, (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2)  # B x L x H x d


def sdpa_backend(q, k, v, mask) -> str | None:
    """The backend PyTorch's dispatcher picks for SDPA on these [B, L, H, d] inputs and mask:
    FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION or MATH (None if this torch cannot say).

    It asks ``torch._fused_sdp_choice``, the dispatcher's own choice function (private, so it is
    used only to record, never to decide anything).
    """
    try:
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(*map(_heads_first, (q, k, v)), mask, 0.0, False)
        return SDPBackend(choice).name
    except (AttributeError, ImportError, RuntimeError, TypeError, ValueError):
        return None


_compiled: dict[str, Callable] = {}


def _compiled_once(name, fn):
    """One torch.compile wrapper per function per process (torch.compile caches per wrapper)."""
    if name not in _compiled:
        _compiled[name] = torch.compile(fn)
    return _compiled[name]


def _swa_compiled(q, k, v, w, state):
    return _compiled_once("swa", sliding_window_attention)(q, k, v, w)


def _flex_block_mask(L, w, device):
    from torch.nn.attention.flex_attention import create_block_mask

    def in_band(b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= w

    return create_block_mask(in_band, None, None, L, L, device=device, _compile=True)


def _flex(q, k, v, w, block_mask):
    from torch.nn.attention.flex_attention import flex_attention

    out = _compiled_once("flex", flex_attention)(*map(_heads_first, (q, k, v)), block_mask=block_mask)
    return out.transpose(1, 2)  # B x L x H x d


def _backend(name: str) -> Callable:
    """attend() through the package's entry point with one backend chosen."""
    return lambda q, k, v, w, state: sliding_window_attention(q, k, v, w, backend=name)


_longformer_layers: dict[tuple, object] = {}


def _longformer_layer(H, d, w):
    """A Hugging Face LongformerSelfAttention, only for its two chunk functions (cached)."""
    if (H, d, w) not in _longformer_layers:
        from transformers import LongformerConfig
        from transformers.models.longformer.modeling_longformer import (
            LongformerSelfAttention,
        )

        config = LongformerConfig(num_attention_heads=H, hidden_size=H * d, attention_window=[2 * w])
        _longformer_layers[H, d, w] = LongformerSelfAttention(config, layer_id=0)
    return _longformer_layers[H, d, w]


def _hf_longformer(q, k, v, w, state):
    layer = _longformer_layers[q.shape[2], q.shape[3], w]
    scores = layer._sliding_chunks_query_key_matmul(q * q.shape[-1] ** -0.5, k, w)  # B x L x H x (2w + 1)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)  # as Longformer's forward does
    return layer._sliding_chunks_matmul_attn_probs_value(probs, v, w)  # B x L x H x d


IMPLEMENTATIONS = {
    impl.name: impl
    for impl in [
        Implementation(
            "dense_sdpa",
            "torch.nn.functional.scaled_dot_product_attention with a boolean L x L band mask",
            attend=_dense_sdpa,
            prepare=lean_window_mask,  # one bool L x L: the mask dense attention keeps
            sdpa_backend=sdpa_backend,
        ),
        Implementation(
            "dense_sdpa_nomask",
            "the same SDPA without a mask: full attention, not the band (dense SDPA's memory floor)",
            attend=_dense_sdpa,
            full_attention=True,
            sdpa_backend=sdpa_backend,
        ),
        Implementation("loop", "swa_tutorial.loop_attention: one query at a time", attend=lambda q, k, v, w, s: loop_attention(q, k, v, w)),
        Implementation(
            "swa", "swa_tutorial.sliding_window_attention, backend='chunks': the book's algorithm (eager)", attend=_backend("chunks")
        ),
        Implementation(
            "swa_compiled", "swa_tutorial.sliding_window_attention under torch.compile", attend=_swa_compiled, compiled=True
        ),
        Implementation(
            "tiles", "swa_tutorial.sliding_window_attention, backend='tiles': query tiles against their key span", attend=_backend("tiles")
        ),
        Implementation(
            "triton",
            "swa_tutorial.sliding_window_attention, backend='triton': the fused Triton kernel (CUDA)",
            attend=_backend("triton"),
            needs="triton",
            cuda_only=True,
        ),
        Implementation(
            "flex",
            "FlexAttention (torch.compile) with a sliding-window block mask",
            attend=_flex,
            prepare=_flex_block_mask,
            load=lambda H, d, w: importlib.import_module("torch.nn.attention.flex_attention"),
            compiled=True,
        ),
        Implementation(
            "hf_longformer",
            "Hugging Face transformers' Longformer chunk functions (scores, softmax, P x V)",
            attend=_hf_longformer,
            load=_longformer_layer,
            needs="transformers",
            whole_chunks=True,
        ),
    ]
}


def why_not(impl: Implementation, L: int, w: int, loop_max_len: int, device: str) -> str | None:
    """Why ``impl`` cannot run at this length on this device (a reason recorded in the results), or None."""
    if impl.cuda_only and torch.device(device).type != "cuda":
        return "runs only on a CUDA device"
    if impl.needs and importlib.util.find_spec(impl.needs) is None:
        return f"needs the optional package {impl.needs!r}"
    if impl.whole_chunks and L % (2 * w):
        return f"needs L to be a multiple of 2w = {2 * w}"
    if impl.name == "loop" and L > loop_max_len:
        return f"the loop runs only for L <= {loop_max_len} (--loop-max-len)"
    return None
