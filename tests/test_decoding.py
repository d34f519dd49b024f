"""The rolling key/value cache against attention with the causal window (left, 0).

Token by token, prefill then steps, the cache must give what the entry point
``sliding_window_attention(q, k, v, (left, 0))`` (the chunks and dense backends) and float64 dense
attention give over the whole sequence (the prompt's padding mask included), for prompts of 0 to
several windows and generations past several windows, while its storage stays where it was
allocated.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cases import assert_close64
from swa_tutorial import RollingKVCache, dense_attention, sliding_window_attention
from swa_tutorial.backends import BACKENDS


def random_sequence(B, L, H, d, dv, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, L, H, dv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def generate(cache, q, k, v, prompt_len, prompt_padding=None):
    """Prefill the first prompt_len tokens, then step through the rest: outputs [B, L, H, d_v]."""
    T = prompt_len
    outs = [cache.prefill(q[:, :T], k[:, :T], v[:, :T], key_padding_mask=prompt_padding)]
    for t in range(T, q.shape[1]):
        outs.append(cache.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]))
    return torch.cat(outs, dim=1)


def storage(cache):
    return [x.data_ptr() for x in (cache.keys, cache.values, cache.positions, cache.held)]


@st.composite
def generations(draw):
    left = draw(st.integers(0, 9))
    S = left + 1
    windows = draw(st.integers(0, 3))  # a prompt of 0 .. 3 windows: empty, shorter, equal, several
    prompt_len = draw(st.sampled_from([0, 1, left, S, windows * S + draw(st.integers(0, S))]))
    steps = draw(st.integers(0, 4 * S + 3))  # past several windows
    d = draw(st.sampled_from((1, 2, 3, 16)))
    return dict(left=left, prompt_len=prompt_len, steps=steps, batch=draw(st.integers(1, 3)),
                heads=draw(st.integers(1, 3)), head_dim=d, value_dim=draw(st.sampled_from((d, 1, 5))),
                padded=draw(st.booleans()), scale=draw(st.sampled_from((None, 1.0, 0.3))),
                seed=draw(st.integers(0, 2**32 - 1)))


@given(generations())
def test_the_cache_is_the_entry_point_token_by_token(case):
    B, H, d, dv, left, T = (case[k] for k in ("batch", "heads", "head_dim", "value_dim", "left", "prompt_len"))
    L = T + case["steps"]
    q, k, v = random_sequence(B, L, H, d, dv, case["seed"])
    padding = torch.zeros(B, L, dtype=torch.bool)
    if case["padded"]:  # left padding, a different amount per row (up to the whole prompt)
        pads = torch.randint(0, T + 1, (B, 1), generator=torch.Generator().manual_seed(case["seed"]))
        padding[:, :T] = torch.arange(T) < pads
    kwargs = dict(key_padding_mask=padding, scale=case["scale"])

    cache = RollingKVCache(left, batch=B, heads=H, head_dim=d, value_dim=dv, dtype=torch.float64, scale=case["scale"])
    before = storage(cache)
    out = generate(cache, q, k, v, T, padding[:, :T] if case["padded"] else None)
    for backend in sorted(set(BACKENDS) - {"triton"}):  # (triton, interpreted here, is slow)
        assert_close64(out, sliding_window_attention(q, k, v, (left, 0), backend=backend, **kwargs), tol=1e-12)
    assert_close64(out, dense_attention(q, k, v, (left, 0), **kwargs), tol=1e-12)
    assert storage(cache) == before  # written in place, never reallocated
    assert cache.keys.shape == (B, left + 1, H, d) and cache.values.shape == (B, left + 1, H, dv)
    newest = list(range(max(0, L - left - 1), L))  # the cache holds the newest left + 1 tokens
    assert sorted(p for p in cache.positions.tolist() if p >= 0) == newest


def test_the_ring_holds_each_token_in_slot_t_mod_s_for_many_windows():
    B, H, d, left = 2, 2, 3, 3
    S, L = left + 1, 10 * (left + 1) + 2
    q, k, v = random_sequence(B, L, H, d, d, seed=1)
    cache = RollingKVCache(left, batch=B, heads=H, head_dim=d, dtype=torch.float64)
    before = storage(cache)
    cache.prefill(q[:, :0], k[:, :0], v[:, :0])
    assert cache.positions.tolist() == [-1] * S and not cache.held.any()
    for t in range(L):
        cache.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1])
        for slot, p in enumerate(cache.positions.tolist()):
            if p >= 0:
                assert p % S == slot and t - left <= p <= t
                assert torch.equal(cache.keys[:, slot], k[:, p]) and torch.equal(cache.values[:, slot], v[:, p])
    assert storage(cache) == before and cache.length == L


def test_left_padded_batch_and_a_prompt_of_only_padding():
    B, H, d, left, T = 3, 1, 4, 2, 7
    q, k, v = random_sequence(B, T + 9, H, d, d, seed=2)
    padding = torch.zeros(B, T + 9, dtype=torch.bool)
    padding[0, :0], padding[1, :3], padding[2, :T] = True, True, True  # row 2: nothing but padding
    cache = RollingKVCache(left, batch=B, heads=H, head_dim=d, dtype=torch.float64)
    out = generate(cache, q, k, v, T, padding[:, :T])
    assert_close64(out, dense_attention(q, k, v, (left, 0), key_padding_mask=padding), tol=1e-12)
    assert torch.equal(out[2, :T], torch.zeros_like(out[2, :T]))  # a query that sees only padding: zeros


def test_reset_starts_a_new_sequence_in_the_same_buffers():
    B, H, d, left = 1, 2, 3, 2
    cache = RollingKVCache(left, batch=B, heads=H, head_dim=d, dtype=torch.float64)
    before = storage(cache)
    for seed, T in ((3, 5), (4, 1)):
        q, k, v = random_sequence(B, T + 6, H, d, d, seed)
        out = generate(cache, q, k, v, T)
        assert_close64(out, dense_attention(q, k, v, (left, 0)), tol=1e-12)
        cache.reset()
    assert storage(cache) == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rounds_only_the_output(dtype):
    """Scores, softmax and P x V in float32: the only error left is rounding the output to dtype."""
    B, H, d, left, T = 2, 2, 64, 5, 20
    q, k, v = random_sequence(B, T + 15, H, d, 8, seed=5, dtype=dtype)
    q = q * 4  # scores of spread ~ 4
    cache = RollingKVCache(left, batch=B, heads=H, head_dim=d, value_dim=8, dtype=dtype)
    out = generate(cache, q, k, v, T)
    assert out.dtype == dtype
    expected = dense_attention(q.double(), k.double(), v.double(), (left, 0))
    torch.testing.assert_close(out.double(), expected, rtol=torch.finfo(dtype).eps, atol=1e-5)


def test_float16_scores_beyond_its_range():
    """q = 100, k = -100, d = 64: every score is -80000 after the scale, past float16's 65504."""
    L, left = 6, 1
    q = torch.full((1, L, 1, 64), 100.0, dtype=torch.float16)
    k = torch.full((1, L, 1, 64), -100.0, dtype=torch.float16)
    v = torch.arange(L, dtype=torch.float16).reshape(1, L, 1, 1)
    padding = torch.zeros(1, L, dtype=torch.bool)
    padding[0, 3] = True
    cache = RollingKVCache(left, batch=1, heads=1, head_dim=64, value_dim=1, dtype=torch.float16)
    out = generate(cache, q, k, v, 4, padding[:, :4])
    expected = dense_attention(q.double(), k.double(), v.double(), (left, 0), key_padding_mask=padding)
    assert torch.equal(out.double(), expected)  # [0, 0.5, 1.5, 2, 4.5, 4.5]: exact in float16


def test_a_device_name_with_or_without_its_index():
    """device="cpu:0" (or "cuda" for "cuda:0") names where the tensors are, as they report it."""
    q, k, v = random_sequence(1, 4, 1, 2, 2, seed=7)
    cache = RollingKVCache(1, batch=1, heads=1, head_dim=2, dtype=torch.float64, device="cpu:0")
    assert_close64(generate(cache, q, k, v, 2), dense_attention(q, k, v, (1, 0)), tol=1e-12)


@pytest.mark.parametrize("prompt_len", [0, 4, 12])
def test_a_nan_key_reaches_exactly_the_windows_that_hold_it(prompt_len):
    left, L, p = 2, 16, 6
    q, k, v = random_sequence(1, L, 1, 3, 3, seed=8)
    k[0, p, 0, 1] = float("nan")
    cache = RollingKVCache(left, batch=1, heads=1, head_dim=3, dtype=torch.float64)
    nan_rows = generate(cache, q, k, v, prompt_len).isnan().any(dim=-1)[0, :, 0]
    assert nan_rows.tolist() == [p <= i <= p + left for i in range(L)]


def test_generation_is_inference_only():
    q, k, v = (x.requires_grad_() for x in random_sequence(1, 3, 1, 2, 2, seed=6))
    cache = RollingKVCache(1, batch=1, heads=1, head_dim=2, dtype=torch.float64)
    assert not generate(cache, q, k, v, 2).requires_grad


def _cache(**kwargs):
    args = dict(batch=2, heads=3, head_dim=4, dtype=torch.float64)
    args.update(kwargs)
    return RollingKVCache(args.pop("left", 2), **args)


def _prefilled():
    cache = _cache()
    cache.prefill(*(torch.zeros(2, 0, 3, 4, dtype=torch.float64) for _ in range(3)))
    return cache


x64 = torch.zeros(2, 1, 3, 4, dtype=torch.float64)
UNUSABLE = next(t for t in ("cuda", "xpu", "mps") if not getattr(torch, t).is_available())  # a device type this build lacks


def test_a_scale_finite_in_float64_only_is_fine_for_a_float64_cache():
    q, k, v = random_sequence(1, 4, 1, 2, 2, seed=9)
    cache = RollingKVCache(1, batch=1, heads=1, head_dim=2, dtype=torch.float64, scale=1e39)
    expected = dense_attention(q, k, v, (1, 0), scale=1e39)
    assert_close64(generate(cache, q, k, v, 2), expected, tol=1e-12)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: _cache(left=-1), ValueError, "left must be an int >= 0, got -1"),
        (lambda: _cache(left=None), TypeError, "left must be an int >= 0: a rolling cache needs a bounded window"),
        (lambda: _cache(left=2.0), TypeError, "left must be an int >= 0, got float"),
        (lambda: _cache(batch=0), ValueError, "batch must be an int >= 1, got 0"),
        (lambda: _cache(value_dim=0), ValueError, "value_dim must be an int >= 1, got 0"),
        (lambda: _cache(dtype=torch.int32), TypeError, "dtype must be torch.float64, float32, float16 or bfloat16"),
        (lambda: _cache(device="nowhere"), ValueError, "device must name a torch device, got 'nowhere'"),
        (lambda: _cache(scale=float("nan")), ValueError, "scale must be a finite real number"),
        (lambda: _cache(scale=1e39, dtype=torch.float32), ValueError,
         "scale must be finite in torch.float32, the dtype it is applied in, got 1e+39"),
        (lambda: _cache(scale=1e39, dtype=torch.bfloat16), ValueError, "scale must be finite in torch.float32"),
        (lambda: _cache(device=UNUSABLE), ValueError,
         f"device must be a device this build of torch can use, got '{UNUSABLE}'"),
        (lambda: _cache().step(x64, x64, x64), RuntimeError, "step() before prefill(): call prefill() first"),
        (lambda: _prefilled().prefill(x64, x64, x64), RuntimeError, "prefill() was already called"),
        (lambda: _prefilled().step(*[torch.zeros(2, 2, 3, 4, dtype=torch.float64)] * 3), ValueError,
         "step: q must have shape [B, 1, H, d] = [2, 1, 3, 4] (one new token), got [2, 2, 3, 4]"),
        (lambda: _cache().prefill(torch.zeros(2, 5, 2, 4, dtype=torch.float64), x64, x64), ValueError,
         "prefill: q must have shape [B, T, H, d] = [2, 5, 3, 4] (the prompt), got [2, 5, 2, 4]"),
        (lambda: _cache().prefill(torch.zeros(5, 3, 4, dtype=torch.float64), x64, x64), ValueError,
         "prefill: q must have shape [B, T, H, d] = [2, 'T', 3, 4] (the prompt), got [5, 3, 4]"),
        (lambda: _cache().prefill(x64, torch.zeros(2, 2, 3, 4, dtype=torch.float64), x64), ValueError,
         "prefill: k must have shape [B, T, H, d] = [2, 1, 3, 4] (the prompt), got [2, 2, 3, 4]"),
        (lambda: _cache(value_dim=5).prefill(x64, x64, x64), ValueError,
         "prefill: v must have shape [B, T, H, d_v] = [2, 1, 3, 5] (the prompt), got [2, 1, 3, 4]"),
        (lambda: _cache().prefill(x64.float(), x64.float(), x64.float()), TypeError,
         "prefill: q must have the cache's dtype torch.float64, got torch.float32"),
        (lambda: _cache(device="meta").prefill(x64, x64, x64), ValueError,
         "prefill: q must be on the cache's device meta, got cpu"),
        (lambda: _cache().prefill(x64, x64, [0.0]), TypeError, "v must be a torch.Tensor"),
        (lambda: _cache().prefill(x64, x64, x64, key_padding_mask=torch.zeros(2, 2, dtype=torch.bool)), ValueError,
         "key_padding_mask must have shape [B, L] = [2, 1], got [2, 2]"),
        (lambda: _cache().prefill(x64, x64, x64, key_padding_mask=torch.zeros(2, 1)), TypeError,
         "key_padding_mask must have dtype torch.bool"),
    ],
)
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)
