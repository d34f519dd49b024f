"""Bad input raises a TypeError or ValueError whose message names the argument and the expectation.

The public function and both references share the checks, so each case runs against all three.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swa_tutorial import (band_mask, band_scores, band_softmax, band_times_values, band_to_dense, chunk, chunk_scores,
                          dense_attention, dense_band_mask, dense_to_band, labelled_qkv, loop_attention, merge_heads,
                          num_chunks, padded_length, skew, sliding_window_attention, split_heads, unskew, value_chunks)

ENTRY_POINTS = (sliding_window_attention, dense_attention, loop_attention)
B, L, H, D = 2, 6, 3, 4


def tensor(*shape, dtype=torch.float64, device="cpu") -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device=device)


def qkv(**changes):
    """Valid q, k, v [2, 6, 3, 4] float64 on the CPU, with those named in ``changes`` replaced."""
    tensors = {name: torch.randn(B, L, H, D, dtype=torch.float64) for name in "qkv"}
    tensors.update(changes)
    return tensors["q"], tensors["k"], tensors["v"]


# q, k, v named with their own dims: [B, L, H, d] (loop_attention, square) or [B, L_q, H, d],
# [B, L_k, H_kv, d], [B, L_k, H_kv, d_v] (grouped heads, queries and keys of their own lengths).
DIMS = r"\[B, L(_q|_k)?, H(_kv)?, d(_v)?\]"
TENSOR = r"must be a torch\.Tensor of shape " + DIMS + ", got "
RANK = r"must have 4 dimensions " + DIMS + ", got "
BAD_TENSORS = {  # name: (the arguments that replace valid ones, the exception, its message)
    "q not a tensor": (dict(q=[[1.0]]), TypeError, "q " + TENSOR + "list"),
    "v not a tensor": (dict(v=None), TypeError, "v " + TENSOR + "NoneType"),
    "q of integers": (
        dict(q=tensor(B, L, H, D, dtype=torch.int64)),
        TypeError,
        r"q must have dtype float64, float32, float16 or bfloat16, got dtype torch\.int64",
    ),
    "k of bools": (
        dict(k=tensor(B, L, H, D, dtype=torch.bool)),
        TypeError,
        r"k must have dtype float64, float32, float16 or bfloat16, got dtype torch\.bool",
    ),
    "q of rank 3": (dict(q=tensor(B, L, H * D)), ValueError, "q " + RANK + r"3 \(shape \(2, 6, 12\)\)"),
    "v of rank 5": (dict(v=tensor(B, L, H, D, 1)), ValueError, "v " + RANK + "5"),
    "k float32": (
        dict(k=tensor(B, L, H, D, dtype=torch.float32)),
        TypeError,
        r"k must have the same dtype as q \(torch\.float64\), got torch\.float32",
    ),
    "v float16": (
        dict(v=tensor(B, L, H, D, dtype=torch.float16)),
        TypeError,
        r"v must have the same dtype as q \(torch\.float64\), got torch\.float16",
    ),
    "k on meta": (
        dict(k=tensor(B, L, H, D, device="meta")),
        ValueError,
        r"k must be on the same device as q \(cpu\), got meta",
    ),
    "v on meta": (
        dict(v=tensor(B, L, H, D, device="meta")),
        ValueError,
        r"v must be on the same device as q \(cpu\), got meta",
    ),
}
# loop_attention takes one sequence of L tokens and H heads for q, k and v alike.
SQUARE_SHAPES = {
    "k shorter": (
        dict(k=tensor(B, L - 1, H, D)),
        ValueError,
        r"k must have the same shape as q \(2, 6, 3, 4\), got \(2, 5, 3, 4\)",
    ),
    "k other head dim": (dict(k=tensor(B, L, H, D + 1)), ValueError, r"k must have the same shape as q"),
    "v other heads": (
        dict(v=tensor(B, L, H + 1, D)),
        ValueError,
        r"v must match q in \[B, L, H\] = \(2, 6, 3\), got \(2, 6, 4\)",
    ),
    "v other batch": (dict(v=tensor(B + 1, L, H, D)), ValueError, r"v must match q in \[B, L, H\]"),
}
# The entry point and dense_attention take grouped heads and L_q != L_k (tests/test_flash_features.py).
GROUPED_SHAPES = {
    "k other batch": (dict(k=tensor(B + 1, L, H, D)), ValueError, r"k must have q's batch size B = 2, got 3"),
    "k other head dim": (dict(k=tensor(B, L, H, D + 1)), ValueError, r"k must have q's head dim d = 4, got 5"),
    "k heads not dividing": (
        dict(k=tensor(B, L, 2, D), v=tensor(B, L, 2, D)),
        ValueError,
        r"k's heads H_kv = 2 must divide q's heads H = 3 \(grouped heads",
    ),
    "v other heads": (
        dict(v=tensor(B, L, H + 1, D)),
        ValueError,
        r"v must match k in \[B, L_k, H_kv\] = \(2, 6, 3\), got \(2, 6, 4\)",
    ),
    "v other length": (dict(v=tensor(B, L - 1, H, D)), ValueError, r"v must match k in \[B, L_k, H_kv\]"),
}


WINDOW = r"window must be an int w >= 1 or a pair \(left, right\) of ints >= 0 \(None for no limit\)"
BAD_WINDOWS = {
    f"window {window!r}": (dict(window=window), error, WINDOW + got)
    for window, error, got in [
        (0, ValueError, "; an int window is one-sided and >= 1, got 0"),
        (-1, ValueError, "; an int window is one-sided and >= 1, got -1"),
        (2.0, TypeError, ", got float"),
        (True, TypeError, ", got bool"),
        ("2", TypeError, ", got str"),
        (None, TypeError, ", got NoneType"),
        ((1, 2, 3), ValueError, ", got a sequence of length 3"),
    ]
}
STEP_WINDOW = r"window must be an int >= 1 \(the one-sided window w\), got "
BAD_STEP_WINDOWS = {
    f"window {window!r}": (window, error, STEP_WINDOW + got)
    for window, error, got in [(0, ValueError, "0"), (-1, ValueError, "-1"), (2.0, TypeError, "float"), (True, TypeError, "bool")]
}

MASK_SHAPE = r"key_padding_mask must have shape \[B, L\] = \[2, 6\], got "
MASK_DTYPE = r"key_padding_mask must have dtype torch\.bool \(True = padding\), got "
BAD_MASKS = {
    f"mask {name}": (dict(key_padding_mask=mask), error, message)
    for name, mask, error, message in [
        ("a list", [[False] * L] * B, TypeError, r"must be a bool torch\.Tensor \[B, L\] or None, got list"),
        ("float", tensor(B, L, dtype=torch.float32), TypeError, MASK_DTYPE + r"torch\.float32"),
        ("int", tensor(B, L, dtype=torch.int64), TypeError, MASK_DTYPE + r"torch\.int64"),
        ("too short", tensor(B, L - 1, dtype=torch.bool), ValueError, MASK_SHAPE + r"\[2, 5\]"),
        ("per head", tensor(B, H, L, dtype=torch.bool), ValueError, MASK_SHAPE + r"\[2, 3, 6\]"),
        ("transposed", tensor(L, B, dtype=torch.bool), ValueError, MASK_SHAPE + r"\[6, 2\]"),
        (
            "on meta",
            tensor(B, L, dtype=torch.bool, device="meta"),
            ValueError,
            r"key_padding_mask must be on the same device as q \(cpu\), got meta",
        ),
    ]
}

BAD_SCALES = {
    f"scale {name}": (dict(scale=scale), TypeError, "scale must be a real number or None, got " + name)
    for name, scale in [("str", "0.5"), ("bool", True), ("Tensor", torch.tensor(0.5)), ("complex", 1j)]
}

BAD_INPUTS = {**BAD_TENSORS, **BAD_WINDOWS, **BAD_MASKS, **BAD_SCALES}
CASES = [(fn, name, case) for fn in ENTRY_POINTS for name, case in BAD_INPUTS.items()]
CASES += [(loop_attention, name, case) for name, case in SQUARE_SHAPES.items()]
CASES += [(fn, name, case) for fn in (sliding_window_attention, dense_attention) for name, case in GROUPED_SHAPES.items()]


@pytest.mark.parametrize("fn, case", [(fn, case) for fn, _, case in CASES],
                         ids=[f"{fn.__name__}-{name}" for fn, name, _ in CASES])
def test_bad_input_raises_a_clear_error(fn, case):
    arguments, error, message = case
    q, k, v = qkv(**{name: arguments[name] for name in "qkv" if name in arguments})
    keywords = {name: arguments[name] for name in ("key_padding_mask", "scale") if name in arguments}
    with pytest.raises(error, match=message):
        fn(q, k, v, arguments.get("window", 2), **keywords)


@pytest.mark.parametrize(
    "step",
    [
        lambda window: band_mask(8, window),
        lambda window: chunk(tensor(1, 8, 1), window),
        lambda window: dense_to_band(tensor(8, 8), window),
    ],
    ids=["band_mask", "chunk", "dense_to_band"],
)
@pytest.mark.parametrize("case", BAD_STEP_WINDOWS.values(), ids=BAD_STEP_WINDOWS.keys())
def test_steps_check_the_window_too(step, case):
    window, error, message = case
    with pytest.raises(error, match=message):
        step(window)


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_unusual_but_valid_arguments_are_accepted(fn):
    """An integer scale, a NumPy integer window and v with its own head dim all pass the checks."""
    q, k, _ = qkv()
    v = torch.randn(B, L, H, 7, dtype=torch.float64)
    out = fn(q, k, v, np.int64(2), scale=2)
    assert out.shape == (B, L, H, 7)
    torch.testing.assert_close(out, dense_attention(q, k, v, 2, scale=2.0), rtol=0, atol=1e-10)


# Every public step validates its arguments (a bad one never passes silently).

BAD_STEP_CALLS = {
    "band_mask, integer padding mask": (
        lambda: band_mask(6, 2, key_padding_mask=torch.ones(1, 6, dtype=torch.uint8)),
        TypeError,
        r"key_padding_mask must have dtype torch\.bool, got torch\.uint8",
    ),
    "band_mask, padded_len < seq_len": (
        lambda: band_mask(8, 2, padded_len=6),
        ValueError,
        r"padded_len must be at least seq_len = 8, got 6",
    ),
    "band_mask, mask of another length": (
        lambda: band_mask(8, 2, key_padding_mask=torch.zeros(1, 7, dtype=torch.bool)),
        ValueError,
        r"key_padding_mask must be \[B, seq_len\] = \[B, 8\], got \[1, 7\]",
    ),
    "band_mask, negative length": (lambda: band_mask(-3, 2), ValueError, r"seq_len must be an int >= 0, got -3"),
    "band_mask, shift beyond w": (lambda: band_mask(8, 2, shift=3), ValueError, r"shift must lie in -window"),
    "band_mask, float length": (lambda: band_mask(8.0, 2), TypeError, r"seq_len must be an int >= 0, got float"),
    "num_chunks, float length": (lambda: num_chunks(8.0, 2), TypeError, r"seq_len must be an int >= 0, got float"),
    "num_chunks, negative length": (lambda: num_chunks(-8, 2), ValueError, r"seq_len must be an int >= 0, got -8"),
    "band_to_dense, even width": (
        lambda: band_to_dense(tensor(1, 5, 4)),
        ValueError,
        r"band must have an odd width 2w \+ 1 >= 3 in its last dim, got 4",
    ),
    "band_to_dense, rank 1": (
        lambda: band_to_dense(tensor(5)),
        ValueError,
        r"band must have at least 2 dimensions \[\.\.\., L, 2w \+ 1\], got 1",
    ),
    "dense_to_band, not square": (
        lambda: dense_to_band(tensor(4, 5), 1),
        ValueError,
        r"dense must be square in its last two dims \[\.\.\., L, L\], got \(4, 5\)",
    ),
    "merge_heads, rank 3": (lambda: merge_heads(tensor(2, 6, 4)), ValueError, r"x must have 4 dimensions \[B, L, H, d\], got 3"),
    "split_heads, batch not dividing": (
        lambda: split_heads(tensor(6, 5, 4), 4),
        ValueError,
        r"batch must divide the merged batch B\*H = 6, got 4",
    ),
    "split_heads, batch 0": (lambda: split_heads(tensor(6, 5, 4), 0), ValueError, r"batch must be an int >= 1, got 0"),
    "chunk, rank 4": (lambda: chunk(tensor(1, 8, 1, 1), 2), ValueError, r"x must have 3 dimensions \[B\*H, L, d\], got 4"),
    "chunk, float size": (lambda: chunk(tensor(1, 8, 1), 2, size=4.0), TypeError, r"size must be an int >= 1, got float"),
    "chunk_scores, shapes differ": (
        lambda: chunk_scores(tensor(1, 3, 4, 2), tensor(1, 3, 4, 3)),
        ValueError,
        r"k_chunks must have the shape of q_chunks \(1, 3, 4, 2\), got \(1, 3, 4, 3\)",
    ),
    "band_scores, not square chunks": (
        lambda: band_scores(tensor(1, 3, 4, 5)),
        ValueError,
        r"chunk_scores must be \[B\*H, C, 2w, 2w\]",
    ),
    "band_scores, rank 3": (
        lambda: band_scores(tensor(3, 4, 4)),
        ValueError,
        r"chunk_scores must have 4 dimensions \[B\*H, C, 2w, 2w\], got 3",
    ),
    "band_softmax, mask of floats": (
        lambda: band_softmax(tensor(1, 4, 3), tensor(1, 4, 3)),
        TypeError,
        r"mask must have dtype torch\.bool, got torch\.float64",
    ),
    "skew, float first": (lambda: skew(tensor(3, 3), 1.0, 2), TypeError, r"first must be an int"),
    "skew, count 0": (lambda: skew(tensor(3, 3), 0, 0), ValueError, r"count must be an int >= 1, got 0"),
    "unskew, rank 1": (lambda: unskew(tensor(3)), ValueError, r"band must have at least 2 dimensions"),
    "value_chunks, rank 4": (lambda: value_chunks(tensor(1, 8, 1, 1), 2), ValueError, r"v must have 3 dimensions"),
    "band_times_values, even width": (
        lambda: band_times_values(tensor(1, 8, 4), tensor(1, 8, 2)),
        ValueError,
        r"probs must have an odd width 2w \+ 1 >= 3 in its last dim, got 4",
    ),
    "band_times_values, lengths differ": (
        lambda: band_times_values(tensor(1, 8, 5), tensor(1, 6, 2)),
        ValueError,
        r"probs \[B\*H, L, 2w \+ 1\] and v \[B\*H, L, d\] must share B\*H and L",
    ),
    "dense_band_mask, negative length": (
        lambda: dense_band_mask(-1, 2),
        ValueError,
        r"seq_len must be an int >= 0, got -1",
    ),
}


@pytest.mark.parametrize("case", BAD_STEP_CALLS.values(), ids=BAD_STEP_CALLS.keys())
def test_steps_reject_bad_arguments(case):
    call, error, message = case
    with pytest.raises(error, match=message):
        call()


MORE_BAD_STEP_CALLS = {
    "padded_length, float length": (lambda: padded_length(8.0, 2), TypeError, r"seq_len must be an int >= 0, got float"),
    "padded_length, negative length": (lambda: padded_length(-1, 2), ValueError, r"seq_len must be an int >= 0"),
    "padded_length, bool window": (lambda: padded_length(5, True), TypeError, r"window must be an int >= 1"),
    "padded_length, window 0": (lambda: padded_length(7, 0), ValueError, r"window must be an int >= 1"),
    "band_softmax, complex scores": (
        lambda: band_softmax(torch.zeros(1, 3, dtype=torch.complex64), torch.ones(1, 3, dtype=torch.bool)),
        TypeError,
        r"scores must have dtype float64, float32, float16 or bfloat16",
    ),
    "band_softmax, mask of another shape": (
        lambda: band_softmax(tensor(2, 8, 5), torch.ones(3, 8, 5, dtype=torch.bool)),
        ValueError,
        r"mask must broadcast to the scores' shape \(2, 8, 5\), got \(3, 8, 5\)",
    ),
    "skew, huge count": (lambda: skew(tensor(3, 5, 7), 0, 2**62), ValueError, r"first and count must lie within 2\*\*31 - 1"),
    "skew, huge first": (lambda: skew(tensor(3, 5, 7), 2**63, 5), ValueError, r"first and count must lie within 2\*\*31 - 1"),
    "chunk_scores, dtypes differ": (
        lambda: chunk_scores(tensor(1, 2, 4, 3, dtype=torch.float32), tensor(1, 2, 4, 3)),
        TypeError,
        r"k_chunks must have the dtype of q_chunks \(torch\.float32\), got torch\.float64",
    ),
    "chunk_scores, odd chunk length": (
        lambda: chunk_scores(tensor(1, 2, 5, 3), tensor(1, 2, 5, 3)),
        ValueError,
        r"the chunks must be 2w tokens long, an even number, got 5",
    ),
    "band_times_values, dtypes differ": (
        lambda: band_times_values(tensor(1, 8, 5), tensor(1, 8, 3, dtype=torch.float32)),
        TypeError,
        r"v must have the dtype of probs \(torch\.float64\), got torch\.float32",
    ),
    "band_to_dense, fill not a number": (lambda: band_to_dense(tensor(1, 4, 5), "x"), TypeError, r"fill must be a real number"),
    "labelled_qkv, negative length": (lambda: labelled_qkv(-1), ValueError, r"seq_len must be an int >= 0, got -1"),
    "labelled_qkv, integer dtype": (lambda: labelled_qkv(3, torch.int64), TypeError, r"dtype must be float64"),
}


@pytest.mark.parametrize("case", MORE_BAD_STEP_CALLS.values(), ids=MORE_BAD_STEP_CALLS.keys())
def test_more_steps_reject_bad_arguments(case):
    call, error, message = case
    with pytest.raises(error, match=message):
        call()


def test_band_mask_of_no_tokens_is_empty():
    assert band_mask(0, 2).shape == (1, 0, 5)


@pytest.mark.parametrize("return_lse", ("yes", 1, None))
def test_return_lse_must_be_a_bool(return_lse):
    with pytest.raises(TypeError, match="return_lse must be a bool"):
        sliding_window_attention(*qkv(), 2, return_lse=return_lse)


# FlashAttention's arguments (issue 17): each bad one named in its error.

T = 7  # packed tokens of two documents, 3 + 4
CU = torch.tensor([0, 3, 7], dtype=torch.int32)


def packed(**changes) -> dict:
    """Valid packed arguments: q, k, v [7, 3, 4], cu_seqlens_q and cu_seqlens_k, with ``changes``."""
    arguments = dict(q=torch.randn(T, H, D, dtype=torch.float64), k=torch.randn(T, H, D, dtype=torch.float64),
                     v=torch.randn(T, H, D, dtype=torch.float64), cu_seqlens_q=CU, cu_seqlens_k=CU)
    arguments.update(changes)
    return arguments


FLASH_HABIT = r"convert it with swa_tutorial\.integrations\.conventions\.from_flash_attn, or call swa_tutorial\.flash_attn_func"
BAD_FEATURES = {  # name: (keyword arguments (q, k, v: batched ones unless given), exception, message)
    "softcap negative": (dict(softcap=-1.0), ValueError, r"softcap must be a finite real number >= 0 \(0 = no cap\), got -1\.0"),
    "softcap infinite": (dict(softcap=float("inf")), ValueError, r"softcap must be a finite real number >= 0"),
    "softcap a string": (dict(softcap="1"), TypeError, r"softcap must be a real number >= 0 \(0 = no cap\), got str"),
    "sinks a list": (dict(sinks=[0.0] * H), TypeError, r"sinks must be a torch\.Tensor of shape \[H\], got list"),
    "sinks per kv head": (dict(sinks=tensor(H + 1)), ValueError, r"sinks must have shape \[H\] = \[3\] \(one logit per query head\), got \[4\]"),
    "sinks of integers": (dict(sinks=tensor(H, dtype=torch.int64)), TypeError, r"sinks must have dtype float64, float32, float16 or bfloat16"),
    "sinks on meta": (dict(sinks=tensor(H, device="meta")), ValueError, r"sinks must be on the same device as q"),
    "FlashAttention's -1 left": (dict(window=(-1, 0)), ValueError, r"window's left must be an int >= 0 or None, got -1; .*" + FLASH_HABIT),
    "FlashAttention's -1 right": (dict(window=(4, -1)), ValueError, r"window's right must be an int >= 0 or None, got -1; .*" + FLASH_HABIT),
    "cu_seqlens int64": (packed(cu_seqlens_q=CU.long()), TypeError, r"cu_seqlens_q must have dtype torch\.int32 \(FlashAttention's varlen convention\), got torch\.int64"),
    "cu_seqlens a list": (packed(cu_seqlens_k=[0, 3, 7]), TypeError, r"cu_seqlens_k must be an int32 torch\.Tensor \[n_docs \+ 1\]"),
    "cu_seqlens 2-D": (packed(cu_seqlens_q=CU[None]), ValueError, r"cu_seqlens_q must be a 1-D tensor \[n_docs \+ 1\]"),
    "cu_seqlens not from 0": (packed(cu_seqlens_q=CU + 1), ValueError, r"cu_seqlens_q must start at 0, got 1"),
    "cu_seqlens decreasing": (
        packed(cu_seqlens_k=torch.tensor([0, 5, 3, 7], dtype=torch.int32), cu_seqlens_q=torch.tensor([0, 1, 2, 7], dtype=torch.int32)),
        ValueError,
        r"cu_seqlens_k must be non-decreasing, got 5 then 3 \(entries 1, 2\)",
    ),
    "cu_seqlens short of the tokens": (packed(cu_seqlens_q=CU[:2]), ValueError, r"cu_seqlens_q must end at the number of tokens T = 7, got 3"),
    "cu_seqlens_k missing": (packed(cu_seqlens_k=None), ValueError, r"cu_seqlens_k must be given too: packed sequences need both"),
    "documents differ in number": (
        packed(cu_seqlens_k=torch.tensor([0, 7], dtype=torch.int32)),
        ValueError,
        r"cu_seqlens_k must describe as many documents as cu_seqlens_q \(2\), got 1",
    ),
    "packed q of rank 4": (packed(q=tensor(1, T, H, D)), ValueError, r"q must have 3 dimensions \[T_q, H, d\] \(packed sequences"),
    "packed with a padding mask": (packed(key_padding_mask=torch.zeros(1, T, dtype=torch.bool)), ValueError, r"key_padding_mask must be None with packed sequences"),
}
ENTRY_ONLY = {  # the arguments dense_attention does not take
    "dropout 1": (dict(dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\), got 1\.0"),
    "dropout negative": (dict(dropout=-0.1), ValueError, r"dropout must be a probability in \[0, 1\), got -0\.1"),
    "dropout a bool": (dict(dropout=True), TypeError, r"dropout must be a probability in \[0, 1\), got bool"),
    "max_seqlen_q below a document": (packed(max_seqlen_q=3), ValueError, r"max_seqlen_q must be at least the longest document's length 4, got 3"),
    "max_seqlen_k not an int": (packed(max_seqlen_k=4.0), TypeError, r"max_seqlen_k must be an int >= 0, got float"),
    "max_seqlen without packing": (dict(max_seqlen_q=4), ValueError, r"max_seqlen_q is only taken with packed sequences"),
}
FEATURE_CASES = [(fn, name, case) for fn in (sliding_window_attention, dense_attention) for name, case in BAD_FEATURES.items()]
FEATURE_CASES += [(sliding_window_attention, name, case) for name, case in ENTRY_ONLY.items()]


@pytest.mark.parametrize("fn, case", [(fn, case) for fn, _, case in FEATURE_CASES],
                         ids=[f"{fn.__name__}-{name}" for fn, name, _ in FEATURE_CASES])
def test_bad_flash_attention_arguments_raise_a_clear_error(fn, case):
    arguments, error, message = case
    arguments = dict(arguments)
    q, k, v = (arguments.pop(name) for name in "qkv") if "q" in arguments else qkv()
    window = arguments.pop("window", 2)
    with pytest.raises(error, match=message):
        fn(q, k, v, window, **arguments)


def test_valid_packed_arguments_pass_the_checks():
    """The packed arguments above are valid as they stand (each bad case changes one thing), with
    max_seqlen at or above the longest document."""
    arguments = packed()
    q, k, v = (arguments.pop(name) for name in "qkv")
    out = sliding_window_attention(q, k, v, 2, max_seqlen_q=4, max_seqlen_k=9, **arguments)
    torch.testing.assert_close(out, dense_attention(q, k, v, 2, **arguments), rtol=0, atol=1e-12)
