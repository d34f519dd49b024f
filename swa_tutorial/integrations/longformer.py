"""Longformer's global attention: a sliding window plus a few tokens that see, and are seen by, all.

The Longformer paper (Beltagy, Peters and Cohan 2020, section 3.1, Figure 2d) adds global
attention to the window "on a few pre-selected input locations": the [CLS] token for
classification, the question's tokens for question answering. A global token attends to every
token and every token attends to it; with its own projections Q_g, K_g, V_g for the global rows.
Read exactly as allenai's ``longformer/longformer.py`` and Hugging Face's
``models/longformer/modeling_longformer.py`` compute it, for each batch element:

* a local query i takes ONE softmax over the keys of its window and every global key. Both
  implementations mask the global keys out of the window part (with the padding) and score them
  all in a separate block, so a global key inside the window is counted once. Local q, k, v.
* the row of a global token is replaced by full attention of its ``q_global`` against
  ``k_global`` and ``v_global`` of every non-padding token (in Hugging Face's model the
  ``query_global``, ``key_global``, ``value_global`` projections; both scale q_global like q).
* padding wins: a token marked both global and padding is padding (Hugging Face multiplies the
  attention mask by the global mask plus one, so 0 stays 0). No query attends a padding key, and
  a padding token's own row is 0 (both implementations zero the probabilities of padding rows).

:func:`longformer_attention` computes this in O(L (w + G)) for G global tokens; the float64
specification it is tested against is :func:`swa_tutorial.reference.dense_longformer_attention`.
:func:`patch_hf_longformer` puts it into a Hugging Face Longformer model.
"""

from __future__ import annotations

import torch

from swa_tutorial.attention import attend
from swa_tutorial.core.optional import require
from swa_tutorial.core.precision import accumulation_dtype, cast_output, without_autocast
from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.core.validation import (
    check_dropout,
    check_key_padding_mask,
    check_like,
    check_qkv,
    check_scale,
    check_token_mask,
)
from swa_tutorial.integrations.conventions import from_hf_longformer


def longformer_attention(
    q, k, v, window, *, global_mask, q_global=None, k_global=None, v_global=None,
    key_padding_mask=None, scale=None, dilation=1, backend="auto", dropout=0.0,
):
    """Sliding-window attention with global tokens, as Longformer defines it.

    Args:
        q: queries [B, L, H, d]: float64, float32, float16 or bfloat16, on any device.
        k: keys [B, L, H, d], the dtype and device of q.
        v: values [B, L, H, d_v], the dtype and device of q.
        window: the local window, any form :func:`swa_tutorial.sliding_window_attention` takes
            (an int w, or a pair (left, right)).
        global_mask: bool [B, L], True marks a global token; the count may differ between batch
            elements and may be 0.
        q_global: the global rows' queries [B, L, H, d] (read at the global tokens only); None
            uses q.
        k_global: the keys the global rows attend [B, L, H, d]; None uses k.
        v_global: the values the global rows average [B, L, H, d_v]; None uses v.
        key_padding_mask: optional bool [B, L], True = padding. Padding outranks global.
        scale: the factor on every score, local and global; default 1 / sqrt(d).
        dilation: the window's dilation, as :func:`swa_tutorial.sliding_window_attention` takes
            it (allenai's kernel dilates the window of a model with global tokens); the global
            columns and rows are never dilated.
        backend: the backend of the window part (see :mod:`swa_tutorial.backends`).
        dropout: a probability p in [0, 1): every attention probability, local or global, is
            dropped with probability p and the kept ones scaled by 1 / (1 - p) (pass
            ``p if self.training else 0``), drawn from torch's default generator as
            :func:`swa_tutorial.sliding_window_attention` draws them. The window part drops
            through that function (its "chunks" backend then), the global blocks drop their
            probabilities: both parts are weights of one softmax, and dropping is elementwise,
            so the merged output is the output of the dropped softmax over the union.

    Returns:
        [B, L, H, d_v], contiguous, the dtype of q. Row i of a local token is the softmax over
        its window's keys and all global keys together (a global key in the window counted
        once) of the local scores, times v; row i of a global token is the softmax over every
        non-padding key of q_global_i . k_global_j, times v_global; a padding token's row is 0.

    The window part is :func:`swa_tutorial.attention.attend` with the global keys masked out;
    the global keys' part is a [B, L, H, G] block; the two softmaxes are merged exactly through
    their log-sum-exps, and the result rounded once. Scores, softmaxes and sums run in float32
    for half inputs (float64 for float64), whatever ``torch.autocast`` says. Differentiable in
    every tensor argument; with no global token the global projections take no part (their
    gradient is None).
    """
    check_qkv(q, k, v)
    B, L, H, d = q.shape
    check_key_padding_mask(key_padding_mask, B, L, q.device)
    check_token_mask(global_mask, "global_mask", "True = global token", B, L, q.device)
    for name, x, like, like_name in (("q_global", q_global, q, "q"), ("k_global", k_global, k, "k"),
                                     ("v_global", v_global, v, "v")):
        if x is not None:
            check_like(x, name, like, like_name)
    scale = check_scale(scale, d, accumulation_dtype(q.dtype))
    dropout = check_dropout(dropout)

    padding = key_padding_mask
    is_global = global_mask if padding is None else global_mask & ~padding  # B x L

    def global_qkv(slots):  # the global rows' queries (at the global tokens), keys and values
        return (_gather(q if q_global is None else q_global, slots),
                k if k_global is None else k_global, v if v_global is None else v_global)

    return _attend_with_globals(q, k, v, window, is_global, padding, scale, dilation, backend, global_qkv, dropout)


def _attend_with_globals(q, k, v, window, is_global, padding, scale, dilation, backend, global_qkv, dropout):
    """:func:`longformer_attention` after validation, ``is_global`` without padding tokens.

    ``global_qkv(slots)`` returns the global rows' queries [B, G, H, d] (at ``slots``, see
    ``_global_slots``), keys [B, L, H, d] and values [B, L, H, d_v]. It is called once the window
    part is done, and only if there is a global token, so that a caller who projects them then
    (:class:`PatchedLongformerSelfAttention`) does not hold them through the window's peak memory.
    """
    # torch.export traces one program for every input: it cannot branch on whether this one
    # has a global token, so it always takes the global part, with G = 0 global slots if none.
    any_global = torch.compiler.is_exporting() or bool(is_global.any())
    # The window part never sees a global key: those come, once, in the global keys' part.
    hidden = (padding | is_global if padding is not None else is_global) if any_global else padding
    out, lse = attend(q, k, v, window, key_padding_mask=hidden, scale=scale, dilation=dilation, backend=backend,
                      dropout=dropout)
    if any_global:
        slots, used = _global_slots(is_global)  # B x G each
        q_g, k_g, v_g = global_qkv(slots)  # (a caller's projections run under its own autocast)
    with without_autocast(q.device):  # (the precision contract's float32, whatever autocast says)
        if any_global:
            out = _with_global_keys(out, lse, q, _gather(k, slots), _gather(v, slots), used, scale, dropout)
            rows = _global_rows(q_g, k_g, v_g, padding, scale, dropout)  # B x G x H x d_v
            batch, position = is_global.nonzero(as_tuple=True)
            out = out.index_put((batch, position), rows[used])  # the global rows replaced
        if padding is not None:
            out = torch.where(padding[:, :, None, None], 0.0, out)
    return cast_output(out, q.dtype)


def _global_slots(is_global):
    """Where each batch element's global tokens are: (slots, used), long and bool [B, G].

    G is the largest count of global tokens in the batch; row b lists its global positions in
    order, then unused slots (``used`` False) that point at some other token.
    """
    B, L = is_global.shape
    # At least one slot: an exported program (which always takes the global part) then never
    # reduces over an empty axis, which ONNX runtimes treat unlike torch. Under torch.export G is
    # a traced number: the checks bound it.
    G = is_global.sum(dim=1).max().clamp(min=1).item()
    torch._check(G >= 1)
    torch._check(G <= max(L, 1))
    position = torch.arange(L, device=is_global.device)
    order = torch.where(is_global, position, position + L)  # global tokens sort first, in order
    slots = order.argsort(dim=1)[:, :G]  # B x G
    return slots, torch.gather(is_global, 1, slots)


def _gather(x, slots):
    """The tokens of x [B, L, H, e] at ``slots`` [B, G]: [B, G, H, e]."""
    B, G = slots.shape
    return torch.gather(x, 1, slots[:, :, None, None].expand(B, G, *x.shape[2:]))


def _with_global_keys(out, lse, q, k_g, v_g, used, scale, dropout):
    """Add G global keys to every query's window softmax: the two softmaxes merged exactly.

    out [B, L, H, d_v], lse [B, L, H]: the window part; k_g [B, G, H, d], v_g [B, G, H, d_v]:
    the global keys and values, ``used`` bool [B, G] the slots that hold one. With lse_1, lse_2
    the log-sum-exps of the two parts and m >= both, the softmax over the union is

        (e^(lse_1 - m) out_1 + e^(lse_2 - m) out_2) / (e^(lse_1 - m) + e^(lse_2 - m)).

    With dropout, out_1 came with its probabilities dropped and the global keys' probabilities
    are dropped here; lse_1 and lse_2 are those of the undropped softmaxes, so the weights
    rescale dropped probabilities, as they would undropped ones.
    """
    acc = out.dtype
    scores = torch.einsum("bihd,bghd->bihg", q.to(acc), k_g.to(acc)) * scale  # B x L x H x G
    probs, lse_g = masked_softmax(scores, used[:, None, None, :])
    probs = torch.nn.functional.dropout(probs, dropout) if dropout else probs
    out_g = torch.einsum("bihg,bghe->bihe", probs, v_g.to(acc))  # B x L x H x d_v
    # The result does not depend on m, so m carries no gradient; a row with no key at all
    # (both lse -inf) takes m = 0, weights 0, and stays 0.
    m = torch.maximum(lse, lse_g).detach()
    m = m.masked_fill(m == float("-inf"), 0.0)
    w, w_g = (lse - m).exp(), (lse_g - m).exp()  # B x L x H each
    total = w + w_g
    total = torch.where(total > 0, total, 1.0)
    return (w[..., None] * out + w_g[..., None] * out_g) / total[..., None]


def _global_rows(q_g, k, v, padding, scale, dropout):
    """Full attention of the global queries q_g [B, G, H, d] over every non-padding token of
    k [B, L, H, d], v [B, L, H, d_v]: [B, G, H, d_v] in the accumulation dtype, its
    probabilities dropped with probability ``dropout``."""
    acc = accumulation_dtype(q_g.dtype)
    scores = torch.einsum("bghd,bjhd->bghj", q_g.to(acc), k.to(acc)) * scale  # B x G x H x L
    every = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=scores.device)
    allowed = every if padding is None else ~padding[:, None, None, :]
    probs, _ = masked_softmax(scores, allowed)
    probs = torch.nn.functional.dropout(probs, dropout) if dropout else probs
    return torch.einsum("bghj,bjhe->bghe", probs, v.to(acc))


class PatchedLongformerSelfAttention(torch.nn.Module):
    """Hugging Face's ``LongformerSelfAttention`` computed by :func:`longformer_attention`.

    It holds the original module's six Linear layers (``query``, ``key``, ``value``,
    ``query_global``, ``key_global``, ``value_global``: the same parameters, under the same names,
    so the state dict is unchanged) and its window (``config.attention_window[layer_id]`` = 2w,
    the window (w, w): :func:`swa_tutorial.integrations.conventions.from_hf_longformer`). Its forward
    takes the arguments Hugging Face's layer passes and returns the same first output.
    """

    def __init__(self, original):
        super().__init__()
        for name in ("query", "key", "value", "query_global", "key_global", "value_global"):
            setattr(self, name, getattr(original, name))
        self.num_heads, self.head_dim = original.num_heads, original.head_dim
        self.layer_id = original.layer_id
        self.window = from_hf_longformer(original.config.attention_window[original.layer_id])
        self.dropout = original.dropout
        self.train(original.training)

    def forward(self, hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                is_global_attn=None, output_attentions=False):
        """hidden_states [B, L, E] (L a multiple of the window: ``LongformerModel`` pads it) ->
        a 1-tuple (attention output [B, L, E],).

        ``attention_mask`` [B, L] is Hugging Face's extended mask: negative for padding, 0 for a
        local token, positive for a global one (``is_index_masked`` and ``is_index_global_attn``
        are those tests, when the encoder passes them).
        """
        if output_attentions:
            raise ValueError(
                "output_attentions=True is not supported by the patched Longformer attention: it never "
                "forms Hugging Face's attention probabilities; call the model with output_attentions=False"
            )
        B, L, E = hidden_states.shape
        padding, is_global = is_index_masked, is_index_global_attn
        if attention_mask is not None:
            padding = attention_mask < 0 if padding is None else padding
            is_global = attention_mask > 0 if is_global is None else is_global
        if is_global is None:
            is_global = torch.zeros(B, L, dtype=torch.bool, device=hidden_states.device)
        if padding is not None:
            is_global = is_global & ~padding  # (Hugging Face's encoder never marks both)

        def heads(x):  # B x L x E -> B x L x H x d
            return x.view(B, L, self.num_heads, self.head_dim)

        q, k, v = (heads(layer(hidden_states)) for layer in (self.query, self.key, self.value))

        def global_qkv(slots):  # as Hugging Face: queries of the global tokens only, after the window
            q_global = self.query_global(_gather(hidden_states[:, :, None], slots))  # B x G x 1 x E
            return (q_global.view(B, -1, self.num_heads, self.head_dim),
                    heads(self.key_global(hidden_states)), heads(self.value_global(hidden_states)))

        out = _attend_with_globals(q, k, v, self.window, is_global, padding, self.head_dim**-0.5, 1, "auto",
                                   global_qkv, self.dropout if self.training else 0.0)
        return (out.reshape(B, L, E),)


def patch_hf_longformer(model):
    """Replace every ``LongformerSelfAttention`` in a Hugging Face model by the package's; return it.

    Works on ``LongformerModel`` and every task head built on it (anything holding
    ``LongformerSelfAttention`` modules), keeping the weights (the same parameter objects). The
    model keeps its own padding to a multiple of the window and its attention-mask encoding; each
    layer keeps its ``attention_window``. In training mode the attention probabilities are
    dropped with ``attention_probs_dropout_prob``, as Hugging Face's layer drops them (its own
    random draws, so not the same tokens). The one difference: ``output_attentions=True`` is
    refused.
    Idempotent: layers patched already are left as they are, so patching a patched model again
    is a no-op that returns it (code that patches whatever model it is handed may do so twice).
    Needs ``transformers`` (imported here, not by the package).
    """
    require("transformers", by=f"{__name__}.patch_hf_longformer")
    from transformers.models.longformer.modeling_longformer import (
        LongformerSelfAttention,
    )

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a Hugging Face Longformer), got {type(model).__name__}")
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, LongformerSelfAttention)
    ]
    if not targets and not any(isinstance(m, PatchedLongformerSelfAttention) for m in model.modules()):
        raise ValueError("model holds no LongformerSelfAttention module to patch (nor a patched one)")
    for parent, name, child in targets:
        setattr(parent, name, PatchedLongformerSelfAttention(child))
    return model
