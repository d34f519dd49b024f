"""Every library's window setting against that library's own mask, as dense bool [L, L] matrices.

Where the library runs here it builds the mask itself: Hugging Face transformers' mask functions
(Mistral, Gemma 2 and 3 from configs made in memory; Longformer's chunk functions), FlexAttention's
``create_mask`` with attention-gym's mask. Where it does not (FlashAttention, xformers, the original
Longformer's TVM kernel) the rule is written as its source states it, cited beside each test. Each
is compared with ``window_mask(L, converted)`` for many lengths, windows at and beyond L included.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.nn.attention.flex_attention import and_masks, create_mask
from transformers import Gemma2Config, Gemma3TextConfig, LongformerConfig, MistralConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_flash_attention_utils import _process_flash_attention_kwargs
from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

from swa_tutorial.integrations.conventions import (from_allenai_longformer, from_flash_attn, from_flex_sliding_window,
                                                   from_gemma, from_hf_longformer, from_mistral, from_xformers)
from swa_tutorial.core.windows import window_mask

LENGTHS = range(1, 14)


def rule_mask(L: int, allowed) -> torch.Tensor:
    """bool [L, L] from a rule allowed(i, j) written as plain Python comparisons."""
    return torch.tensor([[bool(allowed(i, j)) for j in range(L)] for i in range(L)], dtype=torch.bool)


# --- Hugging Face: Mistral, Gemma 2, Gemma 3 (masking_utils, the masks the models use) ---

def hf_config(cls, sliding_window, attn_implementation):
    config = cls(sliding_window=sliding_window, hidden_size=8, intermediate_size=8, num_attention_heads=2,
                 num_key_value_heads=2, head_dim=4, num_hidden_layers=1, vocab_size=10)
    config._attn_implementation = attn_implementation
    return config


def hf_mask(config, L: int) -> torch.Tensor:
    """The model's attention mask for one unpadded sequence of L tokens: bool [L, L], True = attend."""
    make = create_causal_mask if config.sliding_window is None else create_sliding_window_causal_mask
    mask = make(config=config, inputs_embeds=torch.zeros(1, L, config.hidden_size),
                attention_mask=torch.ones(1, L, dtype=torch.long), cache=None,
                position_ids=torch.arange(L)[None], allow_is_causal_skip=False)
    mask = mask[0, 0]  # eager: float 0 / -inf; sdpa: bool
    return mask if mask.dtype == torch.bool else mask == 0


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize(
    "cls, convert", [(MistralConfig, from_mistral), (Gemma2Config, from_gemma), (Gemma3TextConfig, from_gemma)]
)
def test_mistral_and_gemma_against_hugging_face_masks(cls, convert, attn_implementation):
    for W in [None, *range(1, 16)]:
        config = hf_config(cls, W, attn_implementation)
        for L in LENGTHS:
            assert torch.equal(hf_mask(config, L), window_mask(L, convert(W))), (cls.__name__, W, L)


def test_hugging_face_flash_path_agrees_since_pr_40163():
    """transformers 39408: the FlashAttention path now passes (W - 1, W - 1) with causal=True."""
    supports = collections.defaultdict(bool, window_size=True)
    for W in range(1, 16):
        for L in LENGTHS:
            kwargs = _process_flash_attention_kwargs(L, L, is_causal=True, sliding_window=W, supports_mapping=supports)
            window = from_flash_attn(kwargs.get("window_size", (-1, -1)), causal=kwargs["causal"])
            assert torch.equal(window_mask(L, window), window_mask(L, from_mistral(W))), (W, L)


# --- FlexAttention through attention-gym's sliding-window mask ---

def attention_gym_sliding_window(w):
    """attn_gym/masks/sliding_window.py, as its source states it: lookback <= w, and causal."""
    def lookback(b, h, q_idx, kv_idx):
        return q_idx - kv_idx <= w

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    return and_masks(lookback, causal)


def test_flex_sliding_window_against_create_mask():
    for w in range(0, 16):
        for L in LENGTHS:
            mask = create_mask(attention_gym_sliding_window(w), None, None, L, L, device="cpu")[0, 0]
            assert torch.equal(mask, window_mask(L, from_flex_sliding_window(w))), (w, L)


# --- Hugging Face Longformer: its own chunk functions ---

def hf_longformer_mask(attention_window: int, L: int) -> torch.Tensor:
    """Which keys Hugging Face's Longformer scores for each query, as bool [L, L].

    The model pads the sequence to a multiple of attention_window (padding keys masked), then
    ``_sliding_chunks_query_key_matmul`` returns the band [B, Lp, H, 2w + 1] with -inf where
    ``_mask_invalid_locations`` found no key: cell t of row i is key i + t - w.
    """
    config = LongformerConfig(attention_window=[attention_window], hidden_size=2, num_attention_heads=1)
    layer = LongformerSelfAttention(config, layer_id=0)
    w = layer.one_sided_attn_window_size
    Lp = -(-L // attention_window) * attention_window
    ones = torch.ones(1, Lp, 1, 2)
    band = layer._sliding_chunks_query_key_matmul(ones, ones, w)[0, :, 0]  # Lp x (2w + 1)
    dense = torch.zeros(Lp, Lp, dtype=torch.bool)
    for i in range(Lp):
        for t in range(2 * w + 1):
            if torch.isfinite(band[i, t]):
                dense[i, i + t - w] = True
    return dense[:L, :L]  # the padding keys L .. Lp - 1 are masked by the model


def test_hf_longformer_against_its_chunk_functions():
    # attention_window = 2 (one-sided 1) is left out: transformers 5.24's chunk function fails on
    # it (a slice `1 - window_overlap:` that is `0:`), as LongformerModel itself does. The rule as
    # the config states it covers it below.
    for attention_window in (4, 6, 8, 12, 30):
        for L in LENGTHS:
            expected = hf_longformer_mask(attention_window, L)
            assert torch.equal(window_mask(L, from_hf_longformer(attention_window)), expected), (attention_window, L)


# --- Rules as their sources state them (libraries that do not run here) ---

def test_flash_attn_rule():
    """flash_attn_interface.py: keys [i + sk - sq - window_size[0], i + sk - sq + window_size[1]],
    -1 = unbounded; causal keeps j <= i + sk - sq (bottom-right). Here sq = sk."""
    sides = [-1, None, 0, 1, 2, 5, 13, 20]
    for a in sides:
        for b in sides:
            for causal in (False, True):
                lo = float("-inf") if a in (-1, None) else -a
                hi = float("inf") if b in (-1, None) else b
                for L in LENGTHS:
                    rule = rule_mask(L, lambda i, j: lo <= j - i <= hi and (j <= i or not causal))
                    assert torch.equal(window_mask(L, from_flash_attn((a, b), causal=causal)), rule), (a, b, L)


def test_flash_attn_1133_a_window_of_the_whole_sequence_is_causal():
    """flash-attention 1133: window_size=(S - 1, 0) on S tokens is causal=True, the same mask."""
    for S in LENGTHS:
        assert torch.equal(window_mask(S, from_flash_attn((S - 1, 0))), window_mask(S, from_flash_attn((-1, -1), causal=True)))


def test_xformers_rule_and_its_documented_example():
    """attn_bias.py, LocalAttentionFromBottomRightMask: q - window_left <= k + s <= q + window_right,
    s = num_queries - num_keys (0 here); its docstring prints the 4 x 4 mask of (1, 2)."""
    for left in range(0, 8):
        for right in range(0, 8):
            for L in LENGTHS:
                rule = rule_mask(L, lambda q, k: q - left <= k <= q + right)
                assert torch.equal(window_mask(L, from_xformers(left, right)), rule)
    documented = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(window_mask(4, from_xformers(1, 2)), documented)


def test_xformers_causal_local_masks_are_mistrals_rule():
    """attn_bias.py, LowerTriangularFromBottomRightLocalAttentionMask(window_size): a query X from
    the last cannot attend a key less than X, or X + window_size or more, from the last key."""
    for window_size in range(1, 16):
        for L in LENGTHS:
            rule = rule_mask(L, lambda q, k: not ((L - 1 - k) < (L - 1 - q) or (L - 1 - k) >= (L - 1 - q) + window_size))
            assert torch.equal(window_mask(L, from_mistral(window_size)), rule)


def test_allenai_longformer_kernel_rule():
    """diagonaled_mm_tvm.py: diagonal c = 0 .. w + w_upper scores key i + d (c - w), inside the
    sequence, with w_upper = 0 if autoregressive else w. Dilation d passes through unchanged."""
    for autoregressive in (False, True):
        for w in range(1, 9):
            for d in (1, 2, 3):
                w_upper = 0 if autoregressive else w
                for L in LENGTHS:
                    rule = torch.zeros(L, L, dtype=torch.bool)
                    for i in range(L):
                        for c in range(w + w_upper + 1):
                            j = i + d * (c - w)
                            if 0 <= j < L:
                                rule[i, j] = True
                    window = from_allenai_longformer(w, autoregressive=autoregressive)
                    assert torch.equal(window_mask(L, window, dilation=d), rule), (autoregressive, w, d, L)


def test_hf_longformer_rule():
    """LongformerSelfAttention: one_sided_attn_window_size = attention_window // 2 keys each side."""
    for attention_window in range(2, 32, 2):
        for L in LENGTHS:
            rule = rule_mask(L, lambda i, j: abs(i - j) <= attention_window // 2)
            assert torch.equal(window_mask(L, from_hf_longformer(attention_window)), rule)


def test_the_two_longformers_differ_by_a_factor_of_two():
    for w in range(1, 20):
        assert from_hf_longformer(2 * w) == from_allenai_longformer(w) == (w, w)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: from_flash_attn(5), TypeError, "window_size must be a pair (left, right), got int"),
        (lambda: from_flash_attn((1, 2, 3)), ValueError, "window_size must be a pair (left, right), got a sequence of length 3"),
        (lambda: from_flash_attn((-2, 0)), ValueError, "window_size[0] must be an int >= 0, or -1 / None for no limit (FlashAttention's documented sentinel), got -2"),
        (lambda: from_flash_attn((0, 1.5)), TypeError, "window_size[1] must be an int >= 0, or -1 / None for no limit, got float"),
        (lambda: from_flash_attn((True, 0)), TypeError, "window_size[0] must be an int >= 0, or -1 / None for no limit, got bool"),
        (lambda: from_flash_attn((1, 0), causal=1), TypeError, "causal must be a bool, got int"),
        (lambda: from_xformers(-1, 0), ValueError, "window_left must be an int >= 0, got -1"),
        (lambda: from_xformers(0, None), TypeError, "window_right must be an int >= 0, got NoneType"),
        (lambda: from_mistral(0), ValueError, "sliding_window must be an int >= 1, got 0"),
        (lambda: from_mistral(4096.0), TypeError, "sliding_window must be an int >= 1, got float"),
        (lambda: from_gemma([512, 512]), TypeError, "sliding_window must be one layer's window, an int"),
        (lambda: from_gemma(-4), ValueError, "sliding_window must be an int >= 1, got -4"),
        (lambda: from_hf_longformer(5), ValueError, "attention_window must be even (Hugging Face's Longformer window is both sides together, attention_window = 2w), got 5"),
        (lambda: from_hf_longformer(0), ValueError, "attention_window must be an int >= 2, got 0"),
        (lambda: from_hf_longformer([512] * 12), TypeError, "attention_window must be one layer's window, an int; for a per-layer list"),
        (lambda: from_allenai_longformer(0), ValueError, "attention_window must be an int >= 1, got 0"),
        (lambda: from_allenai_longformer(256, autoregressive="yes"), TypeError, "autoregressive must be a bool, got str"),
        (lambda: from_flex_sliding_window(-1), ValueError, "w must be an int >= 0, got -1"),
        (lambda: from_flex_sliding_window(None), TypeError, "w must be an int >= 0, got NoneType"),
    ],
)
def test_bad_settings_name_the_argument(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
