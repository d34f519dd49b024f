"""Other libraries' window settings, as the ``(left, right)`` window that computes the same attention.

Every library writes a sliding window its own way, and the most reported bug in this area is an
off-by-one between two of them. Each function here takes one library's setting, exactly as that
library spells it, and returns ``(left, right)``: query i attends keys i - left .. i + right, both
ends inclusive (None for a side without limit), the form ``swa_tutorial.core.windows.check_window``
takes. A token away from the ends therefore sees left + right + 1 keys.

* FlashAttention ``window_size=(left, right)``: keys i - left .. i + right, so ``(left, right)``,
  left + right + 1 keys;
* xformers ``LocalAttentionFromBottomRightMask(left, right)``: the same, ``(left, right)``;
* Mistral's and Gemma's ``sliding_window=W``: W keys, the token's own the last, ``(W - 1, 0)``;
* attention-gym's ``generate_sliding_window(w)``: w keys back and itself, ``(w, 0)``, w + 1 keys;
* Hugging Face Longformer's ``attention_window=2w``: w on each side, ``(w, w)``, 2w + 1 keys;
* the original Longformer's ``attention_window=w``: w on each side, ``(w, w)``, 2w + 1 keys
  (``autoregressive=True``: only before, ``(w, 0)``, w + 1 keys).

The sources are named in each function; the tests (tests/test_conventions.py) compare every
conversion with the library's own mask wherever that library runs (Hugging Face's mask functions,
FlexAttention's ``create_mask``), and otherwise with the rule as its source states it.

All of these describe queries and keys that are one sequence. Where a library lets the queries be
the last few of a longer key sequence (decoding with a cache), it aligns them bottom-right: the
last query sits at the last key. :class:`swa_tutorial.RollingKVCache` computes exactly that.
"""

from __future__ import annotations

from swa_tutorial.core.validation import check_int, is_int
from swa_tutorial.core.windows import Side


def _pair(value, name: str) -> tuple:
    """``value`` as a 2-tuple, or a TypeError/ValueError naming ``name``."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a pair (left, right), got {type(value).__name__}")
    if len(value) != 2:
        raise ValueError(f"{name} must be a pair (left, right), got a sequence of length {len(value)}")
    return tuple(value)


def _one_layer(value, name: str, minimum: int) -> int:
    """One layer's window size: an int >= ``minimum``. A per-layer list gets its own message."""
    if isinstance(value, (tuple, list)):
        raise TypeError(
            f"{name} must be one layer's window, an int; for a per-layer list convert each entry, "
            f"e.g. [from_...(w) for w in {name}]"
        )
    return check_int(value, name, minimum)


def from_flash_attn(window_size, *, causal: bool = False) -> tuple[Side, Side]:
    """FlashAttention's ``window_size=(left, right)`` (and ``causal``) as ``(left, right)``.

    Source: Dao-AILab/flash-attention, ``flash_attn/flash_attn_interface.py``, the docstring of
    ``flash_attn_func``: "If window_size != (-1, -1), implements sliding window local attention.
    Query at position i will only attend to keys between [i + seqlen_k - seqlen_q -
    window_size[0], i + seqlen_k - seqlen_q + window_size[1]] inclusive", with
    ``window_size=(-1, -1)`` meaning "infinite context window". With equal query and key lengths
    that is keys i - left .. i + right: the same pair. ``causal=True`` adds FlashAttention's
    causal mask (aligned bottom-right, so with equal lengths key j <= query i), which makes the
    right side 0. FlashAttention's newer CuTe interface writes an unbounded side as None.

    -1 and None become None (no limit). Any other negative side is refused: FlashAttention
    documents only -1, and in flash-attention issue 1116 its maintainer did not think window sizes
    are "meant to be negative" (the kernel probably treats them as unbounded, he wrote).

    Issue 1133 (flash-attention) found ``window_size=(S - 1, 0)`` giving other numbers than
    ``causal=True`` on S tokens although the two are the same mask. The maintainer's answer:
    FlashAttention sends a window it recognises as causal (``(S, 0)`` is, ``(S - 1, 0)`` is not)
    to its faster causal kernel, so the two differ by the rounding of two kernels, not by their
    window. Here both are ``(S - 1, 0)``, which on S tokens is ``(None, 0)``.
    """
    pair = _pair(window_size, "window_size")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    sides = []
    for name, side in zip(("window_size[0]", "window_size[1]"), pair):
        if side is None:
            sides.append(None)
            continue
        if not is_int(side):
            raise TypeError(
                f"{name} must be an int >= 0, or -1 / None for no limit, got {type(side).__name__}"
            )
        if side < -1:
            raise ValueError(
                f"{name} must be an int >= 0, or -1 / None for no limit (FlashAttention's "
                f"documented sentinel), got {side}"
            )
        sides.append(None if side == -1 else int(side))
    left, right = sides
    return left, 0 if causal else right


def from_xformers(window_left, window_right) -> tuple[int, int]:
    """xformers' ``LocalAttentionFromBottomRightMask(window_left, window_right)`` as ``(left, right)``.

    Source: facebookresearch/xformers, ``xformers/ops/fmha/attn_bias.py``,
    ``LocalAttentionFromBottomRightMask``: "The query at position q can attend the key at position
    k if q - window_left <= k + s <= q + window_right, with s = num_queries - num_keys", and "The
    total window size is window_left + 1 + window_right". With equal lengths s = 0: the same pair,
    FlashAttention's convention. xformers refuses negative values; so does this.

    xformers' causal local masks count differently: ``make_local_attention(window_size)``,
    ``BlockDiagonalCausalLocalAttentionMask`` and
    ``LowerTriangularFromBottomRightLocalAttentionMask`` keep ``window_size`` keys, the query's
    own included ("cannot attend to a key whose distance to the final key is ... greater than or
    equal to X + window_size"): that is Mistral's rule, ``from_mistral(window_size)`` =
    ``(window_size - 1, 0)``. xformers
    issue 923 asked exactly this (a window of 2048 is FlashAttention's ``(2047, 0)`` and xformers'
    ``window_size=2048``) and was answered yes. vLLM issue 3385 reported that vLLM's xformers
    window of W keys was one short of Hugging Face's FlashAttention path of the time (W + 1 keys);
    it was closed as stale, and Hugging Face later moved to W keys (see :func:`from_mistral`).
    """
    return check_int(window_left, "window_left", 0), check_int(window_right, "window_right", 0)


def _causal_window(sliding_window, name: str) -> tuple[Side, int]:
    """A causal window of ``sliding_window`` keys (the query's own included), or plain causal."""
    if sliding_window is None:
        return None, 0
    return _one_layer(sliding_window, name, 1) - 1, 0


def from_mistral(sliding_window) -> tuple[Side, int]:
    """Mistral's ``sliding_window=W`` as ``(W - 1, 0)``: W keys, the token's own the last.

    Source: Hugging Face transformers, ``MistralConfig.sliding_window`` and
    ``src/transformers/masking_utils.py``: ``sliding_window_causal_mask_function`` is
    ``sliding_window_overlay`` ("kv_idx > q_idx - sliding_window") and ``causal_mask_function``
    ("kv_idx <= q_idx"), so keys i - W + 1 .. i. Its FlashAttention path agrees: in
    ``modeling_flash_attention_utils.py`` it passes ``window_size=(sliding_window - 1,
    sliding_window - 1)`` with ``causal=True`` ("(4, 0) would take 4 tokens to the left and the
    current token for a total size of 5"). ``sliding_window=None`` (Mistral 7B v0.2 and later) is
    ordinary causal attention, ``(None, 0)``.

    The off-by-one this settles: transformers issue 29623 (2024) found the eager mask giving W keys
    and the FlashAttention path, then ``window_size=(W, W)``, W + 1; issue 39408 reported it again
    in 2025, and PR 40163 changed the FlashAttention path to ``(W - 1, W - 1)``: every path now
    sees W keys. Mistral's own ``one_file_ref.py`` (mistralai/mistral-inference) is itself split:
    its prefill mask ``torch.triu(mask, diagonal=-sliding_window)`` admits W + 1 keys, while its
    decoding reads a rotating cache of ``sliding_window`` slots, W keys; the xformers path of
    mistral-inference (``make_local_attention(sliding_window)``) keeps W.
    """
    return _causal_window(sliding_window, "sliding_window")


def from_gemma(sliding_window) -> tuple[Side, int]:
    """Gemma 2 and 3's ``sliding_window=W`` (local layers) as ``(W - 1, 0)``: W keys, the token's own last.

    Sources: Hugging Face transformers, ``Gemma2Config.sliding_window`` /
    ``Gemma3TextConfig.sliding_window``, masked by the same ``sliding_window_causal_mask_function``
    as Mistral (``src/transformers/masking_utils.py``: "kv_idx > q_idx - sliding_window" and
    "kv_idx <= q_idx"); Google's ``gemma_pytorch`` (``gemma/model.py``: the local mask adds
    ``torch.tril(..., diagonal=-sliding_window_size)`` of -inf to the causal mask, so keys
    i - W + 1 .. i); google-deepmind/gemma's ``_create_sliding_mask`` ("cache_positions >
    segment_pos - sliding_window_size", and the causal mask). The global layers have no window.
    ``sliding_window=None`` is ordinary causal attention, ``(None, 0)``.
    """
    return _causal_window(sliding_window, "sliding_window")


def from_hf_longformer(attention_window) -> tuple[int, int]:
    """Hugging Face ``LongformerConfig.attention_window=2w`` (one layer's) as ``(w, w)``.

    Source: Hugging Face transformers, ``src/transformers/models/longformer/``: the config's
    ``attention_window`` is the "Size of an attention window around each token" (an int, or one per
    layer); ``LongformerSelfAttention`` requires it even and positive and sets
    ``one_sided_attn_window_size = attention_window // 2``, and ``_sliding_chunks_query_key_matmul``
    scores the band of ``2 * one_sided_attn_window_size + 1`` keys around each token. So ``attention_window``
    is the whole window less the token itself, 2w: 512 (the released checkpoints) is 256 keys on
    each side. An odd one is refused, as Hugging Face refuses it. (2 is a valid window, (1, 1), but
    transformers 5.24's ``_sliding_chunks_query_key_matmul`` fails on it: a slice
    ``1 - window_overlap:`` that becomes ``0:`` when the one-sided window is 1.)
    """
    w = _one_layer(attention_window, "attention_window", 2)
    if w % 2:
        raise ValueError(
            f"attention_window must be even (Hugging Face's Longformer window is both sides together, "
            f"attention_window = 2w), got {w}"
        )
    return w // 2, w // 2


def from_allenai_longformer(attention_window, *, autoregressive: bool = False) -> tuple[int, int]:
    """The original Longformer's ``attention_window=w`` (one layer's) as ``(w, w)``, or ``(w, 0)``.

    Source: allenai/longformer, ``longformer/longformer.py``, ``LongformerConfig``:
    "attention_window: ... window size = number of attention locations on each side. For an
    affective window size of 512, use attention_window=[256]*num_layers which is 256 on each side";
    "autoregressive: do autoregressive attention or have attention of both sides". Its kernel,
    ``longformer/diagonaled_mm_tvm.py``, scores key i + d (c - w) in diagonal c = 0 .. w + w_upper
    with ``w_upper = 0 if autoregressive else w``, and ``mask_invalid_locations`` masks only the
    beginning when autoregressive: keys i - w .. i + w, or i - w .. i. So this w is the one-sided
    window of :func:`swa_tutorial.sliding_window_attention`, half of Hugging Face's. Its
    ``attention_dilation`` d is this package's ``dilation=d`` unchanged.

    In the versions of ``longformer.py`` we read, ``LongformerSelfAttention`` calls the kernel and
    ``mask_invalid_locations`` with ``autoregressive=False`` whatever the config says (and its
    ``sliding_chunks`` mode asserts the flag is off), so there the model attends both sides;
    ``autoregressive=True`` here is the window of the kernel's own autoregressive mode.
    """
    if not isinstance(autoregressive, bool):
        raise TypeError(f"autoregressive must be a bool, got {type(autoregressive).__name__}")
    w = _one_layer(attention_window, "attention_window", 1)
    return w, 0 if autoregressive else w


def from_flex_sliding_window(w) -> tuple[int, int]:
    """attention-gym's ``generate_sliding_window(w)`` (a FlexAttention mask) as ``(w, 0)``: w + 1 keys.

    Source: meta-pytorch/attention-gym, ``attn_gym/masks/sliding_window.py``: the mask is
    ``q_idx - kv_idx <= window_size`` and'ed with the causal mask, "the window size represents the
    lookback size and we mask out all future tokens". So w counts the keys before the token, not
    the token itself: one more key than Mistral's ``sliding_window=w``. w = 0 is the token alone.
    """
    return check_int(w, "w", 0), 0
