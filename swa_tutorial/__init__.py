"""swa_tutorial: Longformer's sliding-window attention, step by step, tested against dense attention.

Tensors are laid out as [B, L, H, d] (batch, sequence, heads, head dim); ``window`` is the
one-sided w (query i sees keys i - w .. i + w) or a pair (left, right) (keys i - left ..
i + right), see :mod:`swa_tutorial.core.windows`.

The public entry point is :func:`sliding_window_attention`. The steps it composes are public too,
in the order the book derives them: :func:`num_chunks`, :func:`merge_heads`, :func:`chunk`,
:func:`chunk_scores`, :func:`skew`, :func:`band_scores`, :func:`band_mask`,
:func:`band_softmax`, :func:`unskew`, :func:`value_chunks`, :func:`band_times_values`.
The references :func:`dense_attention` and :func:`loop_attention` are the specification.

Longformer's global tokens: :func:`longformer_attention` (the window plus tokens that attend to,
and are attended by, every token; :mod:`swa_tutorial.integrations.longformer` also patches Hugging Face's
Longformer). For generation, :class:`RollingKVCache` keeps the newest keys and values of a causal
window; :mod:`swa_tutorial.integrations.conventions` turns other libraries' window settings into
``(left, right)``; :mod:`swa_tutorial.distributed` shards a sequence across processes (a halo
exchange).

Code written for FlashAttention runs unchanged with :func:`flash_attn_func` and
:func:`flash_attn_varlen_func` (FlashAttention 2's signatures, on any device).
``swa_tutorial.hf.register()`` makes ``attn_implementation="swa_tutorial"`` a Hugging Face
transformers attention implementation (:mod:`swa_tutorial.integrations.hf`; transformers is
imported only then).
"""

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.decoding import RollingKVCache
from swa_tutorial.integrations import conventions
from swa_tutorial.integrations.flash import flash_attn_func, flash_attn_varlen_func
from swa_tutorial.integrations.longformer import longformer_attention
from swa_tutorial.reference import dense_attention, dense_band_mask, loop_attention
from swa_tutorial.steps.band import (
    band_mask,
    band_scores,
    band_softmax,
    band_to_dense,
    dense_to_band,
)
from swa_tutorial.steps.chunks import (
    chunk,
    chunk_scores,
    merge_heads,
    num_chunks,
    padded_length,
    split_heads,
)
from swa_tutorial.steps.labels import labelled_qkv
from swa_tutorial.steps.skewing import skew, unskew
from swa_tutorial.steps.values import band_times_values, value_chunks

__version__ = "0.2.0"


_ON_FIRST_USE = {"distributed": "swa_tutorial.distributed", "hf": "swa_tutorial.integrations.hf"}


def __getattr__(name):
    """``swa_tutorial.distributed`` and ``swa_tutorial.hf`` are imported on first use, not with the
    package: ``python -m swa_tutorial.distributed`` runs it fresh, and importing the package does
    not import transformers."""
    if name in _ON_FIRST_USE:
        import importlib

        return importlib.import_module(_ON_FIRST_USE[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "RollingKVCache",
    "band_mask",
    "band_scores",
    "band_softmax",
    "band_times_values",
    "band_to_dense",
    "chunk",
    "chunk_scores",
    "dense_attention",
    "dense_band_mask",
    "dense_to_band",
    "flash_attn_func",
    "flash_attn_varlen_func",
    "labelled_qkv",
    "longformer_attention",
    "loop_attention",
    "merge_heads",
    "num_chunks",
    "padded_length",
    "skew",
    "sliding_window_attention",
    "split_heads",
    "unskew",
    "value_chunks",
]
