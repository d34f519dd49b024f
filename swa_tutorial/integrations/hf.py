"""Hugging Face transformers: the package as an attention implementation, ``"swa_tutorial"``.

    from swa_tutorial import hf
    hf.register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="swa_tutorial")

:func:`register` adds two functions to transformers (the tests pin 5.24.0):

* :func:`attention`, registered with ``AttentionInterface``: every attention layer of a model
  calls it in place of "sdpa" or "eager", with queries, keys and values [B, H, L, d] (keys and
  values already through the cache), the layer's ``sliding_window``, ``scaling``, ``softcap``,
  ``s_aux`` (sinks) and ``dropout``; it returns the output [B, L, H, d] from
  :func:`swa_tutorial.sliding_window_attention`, in O(L W) time and memory.
* :func:`key_labels`, registered with ``AttentionMaskInterface``: where "sdpa" and "eager" build
  a [B, 1, Lq, Lk] mask, it returns None or one small int8 tensor [B, 1, 1, Lk] that labels each
  key: 1 a real key, 0 padding, -1 a cache slot not yet written (a static cache's tail). No
  L x L mask is built anywhere.

The facts this rests on, read in transformers' ``masking_utils.py``, ``cache_utils.py``,
``integrations/flash_attention.py`` and ``modeling_flash_attention_utils.py``:

* The mask functions get the 2D padding mask (True: a real token) over the positions 0 .. past +
  Lq - 1, the queries' first position ``q_offset`` and the keys' ``kv_offset``: key slot j holds
  position kv_offset + j (a sliding cache layer keeps only the last W - 1 keys; a static cache
  has ``kv_length`` = its size, written only up to the last query).
* The window comes from the layer: ``sliding_window=W`` (None for a full-attention layer) with
  the module's ``is_causal``. Causal: W keys, the query's own the last, ``(W - 1, 0)``
  (:func:`~swa_tutorial.integrations.conventions.from_mistral`); bidirectional (ModernBERT,
  whose layers pass ``local_attention // 2 + 1``; Gemma with ``use_bidirectional_attention``):
  ``(W - 1, W - 1)``. These are the windows transformers' FlashAttention path passes
  (``window_size=(W - 1, W - 1)`` with ``causal``), which its tests hold equal to "eager".
* Packed sequences: the FlashAttention path finds them in the ``position_ids`` each layer
  receives, when there is no padding (a batch of one row; a document starts where the position
  is the row's smallest). :func:`attention` reads them there too, for any batch size, with the
  rule of the masks' ``find_packed_sequence_indices`` (a document starts wherever the position
  does not grow by 1), and attends each document alone (``cu_seqlens``). ``cu_seq_lens_q`` /
  ``cu_seq_lens_k`` keyword arguments (``DataCollatorWithFlattening(return_flash_attn_kwargs=
  True)``) are taken as they are. The masks of "eager" look for packing only without a 2D mask
  and without a cache, and not at all in a model whose forward does not hand them
  ``position_ids`` (GPT-OSS's, in 5.24): there "eager" lets the documents attend each other.

What a model asks for that the package cannot do is a ValueError naming the model and the feature,
never a silent other answer: a ``position_bias`` (an additive attention bias, e.g. T5's), a 4D
``attention_mask`` made by the caller, and any mask pattern other than causal or bidirectional,
windowed or not, with padding and packing (chunked attention, bidirectional blocks of image
tokens, custom ``or_mask_function``/``and_mask_function``): :func:`key_labels` reads the parts
of transformers' mask function and refuses the ones it does not know.

Outputs at padding query positions are not defined by any implementation (eager averages masked
keys, FlashAttention returns 0); compare models on the real tokens.
"""

from __future__ import annotations

import inspect
import warnings

import torch
import torch.nn.functional as F

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.integrations.conventions import from_mistral

NAME = "swa_tutorial"

# The parts of transformers' mask functions (masking_utils.py) that this integration applies.
_KNOWN_PARTS = {
    "and_masks.<locals>.and_mask",
    "causal_mask_function",
    "bidirectional_mask_function",
    "sliding_window_overlay.<locals>.inner_mask",
    "sliding_window_bidirectional_overlay.<locals>.inner_mask",
    "padding_mask_function.<locals>.inner_mask",
    "packed_sequence_mask_function.<locals>.inner_mask",
    "remap_positions_for_packed_sequence.<locals>.inner_mask",
}
_FEATURES = {  # parts it refuses, named as the models' configs name them
    "chunked_overlay.<locals>.inner_mask": "chunked attention (attention_chunk_size)",
    "blockwise_overlay.<locals>.inner_mask": "bidirectional blocks of tokens (block_sequence_ids, e.g. images)",
    "or_masks.<locals>.or_mask": "a union of mask patterns (or_mask_function)",
}


def register() -> str:
    """Register ``"swa_tutorial"`` with transformers' attention and mask interfaces; return the name.

    Idempotent. Afterwards ``attn_implementation="swa_tutorial"`` works in ``from_pretrained``,
    ``from_config`` and ``model.set_attn_implementation``.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as error:
        raise ImportError(
            f"swa_tutorial.hf.register needs Hugging Face transformers (pip install transformers): {error}"
        ) from None

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, key_labels)
    return NAME


def key_labels(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
               config=None, **kwargs):
    """transformers' mask function for ``"swa_tutorial"``: None, or int8 [B, 1, 1, Lk] key labels.

    Called by ``create_causal_mask`` and its siblings with the arguments of ``sdpa_mask``. The
    label of key slot j (position kv_offset + j): 1 for a real key, 0 if the 2D mask marks it
    padding, -1 if it lies after the last query's position (a static cache's unwritten slots).
    None when every key is real. ``mask_function`` is only checked: a part the package cannot
    apply is a ValueError naming the model and the feature.
    """
    _check_mask_parts(mask_function, config)
    written = int(q_offset) + q_length - kv_offset  # slots up to the last query's position
    if not 0 < written <= kv_length:
        raise ValueError(f"{_model(config)}: the queries (positions {int(q_offset)} .. {int(q_offset) + q_length - 1}) "
                         f"do not end among the keys (positions {kv_offset} .. {kv_offset + kv_length - 1})")
    labels = torch.ones(batch_size, kv_length, dtype=torch.int8, device=kwargs.get("device", "cpu"))
    if attention_mask is not None:  # bool [B, past + Lq]: True for a real token
        real = F.pad(attention_mask, (0, max(0, kv_offset + kv_length - attention_mask.shape[-1])))
        labels = real[:, kv_offset : kv_offset + kv_length].to(torch.int8)
    labels[:, written:] = -1
    if not torch.compiler.is_exporting() and bool((labels == 1).all()):
        return None
    return labels[:, None, None, :]


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
              softcap=None, s_aux=None, **kwargs):
    """transformers' attention function for ``"swa_tutorial"``.

    Args:
        module: the attention layer (its ``config`` and ``is_causal`` are read).
        query: [B, H, Lq, d]; key, value: [B, H_kv, Lk, d] and [B, H_kv, Lk, d_v] (the cache's).
        attention_mask: what :func:`key_labels` returned for this layer's type.
        dropout: attention dropout probability (the model passes 0 in eval mode).
        scaling: the factor on q . k (default 1 / sqrt(d)).
        sliding_window: the layer's W (None: a full-attention layer).
        softcap: Gemma 2's ``attn_logit_softcapping`` (None: none).
        s_aux: GPT-OSS's sinks [H] (None: none).
        kwargs: ``is_causal`` overrides the module's; ``position_ids`` [B, L] or
            ``cu_seq_lens_q``/``cu_seq_lens_k`` (with ``max_length_q``/``max_length_k``) give
            packed documents; ``position_bias`` is refused.

    Returns:
        The output [B, Lq, H, d_v] and None in place of the attention weights, which it never
        forms (a warning says so if ``output_attentions`` is asked for).
    """
    model = _model(getattr(module, "config", None))
    if kwargs.get("position_bias") is not None:
        raise ValueError(f"{model}: swa_tutorial cannot add an attention bias (position_bias); use 'eager' or 'sdpa'")
    if kwargs.get("output_attentions"):
        warnings.warn("swa_tutorial does not return attention weights (output_attentions): they are None", stacklevel=2)
    is_causal = kwargs.get("is_causal")
    window = layer_window(sliding_window, getattr(module, "is_causal", True) if is_causal is None else is_causal)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, H, L, d] -> [B, L, H, d]
    common = dict(scale=scaling, softcap=0.0 if softcap is None else softcap, sinks=s_aux, dropout=dropout)
    labels = _labels(attention_mask, k.shape[1], model)
    if torch.compiler.is_exporting():
        return _exported(q, k, v, window, labels, kwargs, model, common), None
    if labels is not None:
        written = int((labels[0] != -1).sum())  # a static cache's unwritten tail is the same in every row
        k, v, labels = k[:, :written], v[:, :written], labels[:, :written]
        if bool((labels == 0).any()):
            return sliding_window_attention(q, k, v, window, key_padding_mask=labels == 0, **common), None
    if kwargs.get("cu_seq_lens_q") is not None and kwargs.get("cu_seq_lens_k") is not None:
        cu_q, cu_k = (kwargs[name].to(torch.int32) for name in ("cu_seq_lens_q", "cu_seq_lens_k"))
        longest = [None if kwargs.get(n) is None else int(kwargs[n]) for n in ("max_length_q", "max_length_k")]
        return _packed(q, k, v, window, cu_q, cu_k, *longest, common), None
    documents = _documents(kwargs.get("position_ids"), *q.shape[:2]) if q.shape[1] == k.shape[1] else None
    if documents is not None:
        cu_seqlens, longest = documents
        return _packed(q, k, v, window, cu_seqlens, cu_seqlens, longest, longest, common), None
    return sliding_window_attention(q, k, v, window, **common), None


def layer_window(sliding_window, is_causal: bool) -> tuple:
    """A layer's ``(left, right)`` from transformers' ``sliding_window`` W and the layer's causality.

    Causal: ``(W - 1, 0)``, W keys, the query's own the last (transformers' sliding-window masks
    and :func:`~swa_tutorial.integrations.conventions.from_mistral`); bidirectional: ``(W - 1,
    W - 1)``; W = None: no window, ``(None, 0)`` or ``(None, None)``.
    """
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    left, right = from_mistral(sliding_window)
    return (left, right) if is_causal else (left, left)


def _labels(attention_mask, keys: int, model: str):
    """:func:`key_labels`' tensor as int8 [B, Lk], None, or a ValueError for any other mask."""
    if attention_mask is None:
        return None
    if not (isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.int8
            and attention_mask.dim() == 4 and attention_mask.shape[1:3] == (1, 1)):
        raise ValueError(
            f"{model}: swa_tutorial takes the 2D padding mask (attention_mask [B, L]) and builds no L x L mask; "
            f"got a prepared mask {getattr(attention_mask, 'dtype', type(attention_mask).__name__)} "
            f"{tuple(getattr(attention_mask, 'shape', ()))}: pass the 2D mask, or use 'eager' for a custom 4D mask"
        )
    if attention_mask.shape[-1] != keys:
        raise ValueError(f"{model}: the mask labels {attention_mask.shape[-1]} keys, the layer has {keys}")
    return attention_mask[:, 0, 0]


def cu_seqlens_from_positions(position_ids) -> torch.Tensor:
    """The packed documents of ``position_ids`` [B, L] as FlashAttention's ``cu_seqlens``.

    A document starts at each row's first token and wherever the position does not grow by 1
    (transformers' rule, ``find_packed_sequence_indices``: documents restart their positions,
    at 0 or at any other first position). Returns int32 [n + 1]: 0, then the cumulative lengths of
    the n documents read row after row, ending at B * L.
    """
    B, L = position_ids.shape
    starts = torch.ones(B, L, dtype=torch.bool, device=position_ids.device)
    starts[:, 1:] = position_ids.diff(dim=-1) != 1
    first = starts.flatten().nonzero().flatten()
    return torch.cat([first, first.new_tensor([B * L])]).to(torch.int32)


def _exported(q, k, v, window, labels, kwargs, model: str, common):
    """The attention of an exported program (torch.export, ONNX): one program for every input,
    so it cannot branch on the labels' values. The keys of each row are rotated right by its
    count of unwritten slots (label -1, a static cache's tail), which puts those slots first and
    the last written key last, where the queries are aligned; the unwritten and the padding
    slots (label 0) are then one key padding mask. With no unwritten slot the rotation is the
    identity. Packed documents are not taken: ``cu_seq_lens`` is refused, and ``position_ids``
    that restart within a row cannot be told from one document there (their values are not
    known when the program is traced): export rows of one document each, with the 2D
    ``attention_mask``."""
    if kwargs.get("cu_seq_lens_q") is not None:
        raise ValueError(f"{model}: an exported swa_tutorial model takes no packed documents (cu_seq_lens); "
                         "export rows of one document each, with the 2D attention_mask")
    if labels is None:
        return sliding_window_attention(q, k, v, window, **common)
    keys = labels.shape[1]
    slot = torch.arange(keys, device=labels.device) - (labels == -1).sum(dim=1, keepdim=True)  # B x Lk
    slot = torch.where(slot < 0, slot + keys, slot)  # (slot mod Lk: ONNX's converter has no mod by a traced size)
    k, v = (torch.gather(x, 1, slot[:, :, None, None].expand_as(x)) for x in (k, v))
    padding = torch.gather(labels, 1, slot) != 1
    return sliding_window_attention(q, k, v, window, key_padding_mask=padding, **common)


def _documents(position_ids, B: int, L: int):
    """(cu_seqlens, the longest document's length) of packed ``position_ids`` [B or 1, L], or None
    when they are not a tensor of that shape or hold one document per row."""
    if not isinstance(position_ids, torch.Tensor) or position_ids.dim() != 2 or position_ids.shape[-1] != L or L < 2:
        return None
    cu_seqlens = cu_seqlens_from_positions(position_ids.expand(B, L))
    if len(cu_seqlens) == B + 1:
        return None
    return cu_seqlens, int(cu_seqlens.diff().max())


def _packed(q, k, v, window, cu_q, cu_k, max_q, max_k, common):
    """Packed documents: rows flattened to [B * L, H, d], attended, back to [B, L, H, d_v]."""
    B, Lq = q.shape[:2]
    out = sliding_window_attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), window,
        cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, **common,
    )
    return out.unflatten(0, (B, Lq))


def _check_mask_parts(mask_function, config) -> None:
    """Every part of a transformers mask function (its closures, walked) must be one this module
    applies; otherwise a ValueError naming the model and the feature (the most specific part: a
    union of patterns is named only when nothing inside it is unknown)."""
    todo, unknown = ([mask_function] if mask_function is not None else []), []
    while todo:
        fn = todo.pop()
        if fn.__module__ != "transformers.masking_utils" or fn.__qualname__ not in _KNOWN_PARTS:
            unknown.append(fn)
        for value in inspect.getclosurevars(fn).nonlocals.values():
            values = value if isinstance(value, (tuple, list)) else (value,)
            todo += [f for f in values if inspect.isfunction(f)]
    if getattr(config, "use_bidirectional_attention", False):  # Gemma's: its layers are bidirectional, the
        unknown = [fn for fn in unknown if fn.__module__ == "transformers.masking_utils"  # window rule covers
                   and fn.__qualname__ != "or_masks.<locals>.or_mask"]               # the model's own parts
    if unknown:
        fn = sorted(unknown, key=lambda f: f.__qualname__ == "or_masks.<locals>.or_mask")[0]
        feature = _FEATURES.get(fn.__qualname__, f"the mask pattern {fn.__module__}.{fn.__qualname__}")
        raise ValueError(f"{_model(config)}: swa_tutorial cannot apply {feature}; use 'eager' or 'sdpa' for this model")


def _model(config) -> str:
    """The model's name for messages: its config's ``model_type``."""
    return f"model {getattr(config, 'model_type', None) or 'of unknown type'}"
