"""Longformer's global attention against its float64 dense specification, and the Hugging Face drop-in.

``longformer_attention`` is checked against ``dense_longformer_attention`` (one L x L mask: band,
global columns, global rows) on random problems: every window form and dilation, global counts from
0 to L, padding (global tokens that are padding included), separate global projections or not;
gradients against the reference's, gradcheck, half precision against SDPA on the same mask. Then
``patch_hf_longformer`` on small randomly initialised Hugging Face models (no download): outputs in
eval mode and every parameter's gradient in train mode equal the original's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cases import assert_close64, window_cases
from swa_tutorial import longformer_attention, sliding_window_attention
from swa_tutorial.integrations.longformer import patch_hf_longformer
from swa_tutorial.reference import dense_longformer_attention
from swa_tutorial.core.windows import window_mask

GLOBALS = ("none", "first", "few", "random", "all", "on_padding")


@st.composite
def problems(draw, max_len: int = 48):
    """(case, globals, separate): a window problem, how its global tokens are chosen, and whether
    the global rows have their own projections."""
    case = draw(window_cases(max_len=max_len, max_heads=3))
    return case, draw(st.sampled_from(GLOBALS)), draw(st.booleans())


def make(case, globals_, separate, dtype=torch.float64):
    """The arguments of both functions: (q, k, v), and keywords with global_mask and the rest."""
    q, k, v, mask = case.tensors(dtype)
    g = torch.Generator().manual_seed(case.seed + 1)
    B, L = case.batch, case.seq_len
    chosen = {
        "none": torch.zeros(B, L, dtype=torch.bool),
        "first": torch.arange(L) == 0,  # the [CLS] token
        "few": torch.rand(B, L, generator=g) < 3 / L,
        "random": torch.rand(B, L, generator=g) < torch.rand(B, 1, generator=g),  # a count per row
        "all": torch.ones(B, L, dtype=torch.bool),
        "on_padding": torch.rand(B, L, generator=g) < 0.5,
    }[globals_]
    if globals_ == "on_padding" and mask is not None:
        chosen = chosen | mask  # every padding token also marked global: padding must win
    kwargs = dict(global_mask=chosen.expand(B, L).clone(), **case.kwargs(mask))
    if separate:
        q_g, k_g = (torch.randn(q.shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(2))
        v_g = torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype)
        kwargs.update(q_global=q_g, k_global=k_g, v_global=v_g)
    return (q, k, v), kwargs


@pytest.mark.parametrize("backend", ("chunks", "dense"))
@settings(max_examples=40)
@given(problem=problems())
def test_float64_matches_the_definition(backend, problem):
    case, globals_, separate = problem
    (q, k, v), kwargs = make(case, globals_, separate)
    out = longformer_attention(q, k, v, case.window, backend=backend, **kwargs)
    ref = dense_longformer_attention(q, k, v, case.window, **kwargs)
    assert out.shape == v.shape and out.dtype == torch.float64 and out.is_contiguous()
    assert_close64(out, ref)
    padding = kwargs["key_padding_mask"]
    if padding is not None:
        assert (out[padding] == 0).all()  # a padding token's row is exactly 0, global or not


@settings(max_examples=20)
@given(problem=problems(max_len=32))
def test_gradients_match_the_definition(problem):
    case, globals_, separate = problem
    (q, k, v), kwargs = make(case, globals_, True)
    tensors = dict(q=q, k=k, v=v, **{n: kwargs.pop(n) for n in ("q_global", "k_global", "v_global")})
    if not separate:  # the local tensors serve the global rows too: gradients add up
        del tensors["q_global"], tensors["k_global"], tensors["v_global"]
    d_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(case.seed + 2), dtype=torch.float64)
    padding = kwargs["key_padding_mask"]
    padding = torch.zeros_like(kwargs["global_mask"]) if padding is None else padding

    def gradients(fn):
        inputs = {n: x.clone().requires_grad_() for n, x in tensors.items()}
        out = fn(window=case.window, **inputs, **kwargs)
        return torch.autograd.grad((out * d_out).sum(), list(inputs.values()), allow_unused=True)

    for fast, exact in zip(gradients(longformer_attention), gradients(dense_longformer_attention)):
        if fast is None:  # a global projection without a global token takes no part
            assert not (kwargs["global_mask"] & ~padding).any() and (exact == 0).all()
            continue
        assert torch.isfinite(fast).all()
        assert_close64(fast, exact, tol=1e-10 * max(1.0, exact.abs().max().item()))


def tiny(seed=0, dtype=torch.float64):
    """A small problem with everything at once: B = 2, L = 7, H = 2, varying global counts, a global
    token that is padding, separate global projections (q, k, q_g, k_g [2, 7, 2, 3]; v, v_g d_v = 2)."""
    g = torch.Generator().manual_seed(seed)
    q, k, q_g, k_g = (torch.randn(2, 7, 2, 3, generator=g, dtype=dtype) for _ in range(4))
    v, v_g = (torch.randn(2, 7, 2, 2, generator=g, dtype=dtype) for _ in range(2))
    global_mask = torch.zeros(2, 7, dtype=torch.bool)
    global_mask[0, [0, 4]] = True
    global_mask[1, [3, 5]] = True  # token 5 of row 1 is padding: it is no global token
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    return (q, k, v, q_g, k_g, v_g), dict(global_mask=global_mask, key_padding_mask=padding)


@pytest.mark.parametrize("window, dilation", [(1, 1), ((2, 0), 1), ((0, 3), 1), (1, (1, 2))])
def test_gradcheck(window, dilation):
    tensors, kwargs = tiny()
    tensors = [x.requires_grad_() for x in tensors]

    def fn(q, k, v, q_g, k_g, v_g):
        return longformer_attention(q, k, v, window, q_global=q_g, k_global=k_g, v_global=v_g, scale=0.8,
                                    dilation=dilation, **kwargs)

    # fast mode (random directions): the full Jacobian of six inputs takes minutes on two cores,
    # and the exact gradients are compared with the reference's above
    assert torch.autograd.gradcheck(fn, tensors, fast_mode=True)


def probabilities_through_longformer(p, seed, window=(3, 2), L=24):
    """The dropped weights themselves: values one-hot over the keys (v = v_global = the identity,
    [1, L, 2, L]), so row i of head h of the output is its (dropped) probabilities over all keys,
    the global rows' included. Tokens 0 and 9 are global, the last three padding."""
    g = torch.Generator().manual_seed(4)
    q, k, q_g, k_g = (torch.randn(1, L, 2, 4, generator=g, dtype=torch.float64) for _ in range(4))
    identity = torch.eye(L, dtype=torch.float64).expand(1, 2, L, L).permute(0, 2, 1, 3)
    global_mask = torch.zeros(1, L, dtype=torch.bool)
    global_mask[0, [0, 9]] = True
    padding = torch.zeros(1, L, dtype=torch.bool)
    padding[0, L - 3:] = True
    torch.manual_seed(seed)
    return longformer_attention(q, k, identity, window, q_global=q_g, k_global=k_g, v_global=identity,
                                global_mask=global_mask, key_padding_mask=padding, dropout=p)


def test_dropout_drops_local_and_global_weights_alike():
    """Each weight of the one softmax (window and global keys) and of the global rows is kept
    (times 1 / (1 - p)) or dropped: the kept fraction is within 5 standard deviations of
    1 - p, each kept weight is the undropped one / (1 - p) exactly, no weight appears where
    there was none; the same seed gives the same draws, and p = 0 is no dropout exactly."""
    p = 0.3
    exact = probabilities_through_longformer(0.0, 0)
    allowed = exact > 0
    dropped = probabilities_through_longformer(p, 0)
    kept = dropped != 0
    assert not (kept & ~allowed).any()
    assert_close64(dropped[kept], exact[kept] / (1 - p))
    n = allowed.sum().item()
    assert abs(kept.sum().item() / n - (1 - p)) <= 5 * (p * (1 - p) / n) ** 0.5
    for row in (0, 9):  # the global rows drop too (they attend every non-padding token)
        assert (kept[0, row] != allowed[0, row]).any()
    assert torch.equal(dropped, probabilities_through_longformer(p, 0))
    assert not torch.equal(dropped, probabilities_through_longformer(p, 1))
    assert torch.equal(exact, probabilities_through_longformer(0.0, 1))


def test_a_global_key_in_the_window_counts_once():
    """Query 1 with window 1 and token 2 global sees keys {0, 1, 2}: key 2 once, not twice; query 4
    sees its window {3, 4, 5} and key 2; with no global token the result is the plain window's."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 6, 1, 2, generator=g, dtype=torch.float64) for _ in range(3))
    global_mask = torch.tensor([[False, False, True, False, False, False]])
    out = longformer_attention(q, k, v, 1, global_mask=global_mask, scale=1.0)

    def over(i, keys):  # softmax of q_i . k_j over exactly these keys, times v
        weights = (k[0, keys, 0] @ q[0, i, 0]).softmax(dim=0)
        return weights @ v[0, keys, 0]

    assert_close64(out[0, 1, 0], over(1, [0, 1, 2]))
    assert_close64(out[0, 4, 0], over(4, [2, 3, 4, 5]))
    assert_close64(out[0, 2, 0], over(2, [0, 1, 2, 3, 4, 5]))  # the global row: every key
    nobody = torch.zeros_like(global_mask)
    assert_close64(longformer_attention(q, k, v, 1, global_mask=nobody), sliding_window_attention(q, k, v, 1))


@pytest.mark.parametrize("shape", [(0, 5, 2, 3), (2, 0, 2, 3), (2, 5, 0, 3), (2, 5, 2, 0)])
def test_empty_sizes(shape):
    """B, L, H or d = 0, with global tokens where there are tokens: the definition's result."""
    q, k, v = (torch.randn(shape, dtype=torch.float64) for _ in range(3))
    global_mask = torch.ones(shape[:2], dtype=torch.bool)
    out = longformer_attention(q, k, v, 1, global_mask=global_mask)
    assert out.shape == v.shape
    if shape[2] > 0:  # (the reference's per-head masks need a head)
        assert_close64(out, dense_longformer_attention(q, k, v, 1, global_mask=global_mask))


def test_autocast_leaves_the_precision_alone():
    """Under CPU autocast to bfloat16 the float32 computation is unchanged (the precision
    contract: float32 products whatever autocast says)."""
    (q, k, v, q_g, k_g, v_g), kwargs = tiny(dtype=torch.float32)
    kwargs.update(q_global=q_g, k_global=k_g, v_global=v_g)
    expected = longformer_attention(q, k, v, 2, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = longformer_attention(q, k, v, 2, **kwargs)
    assert got.dtype == torch.float32 and torch.equal(got, expected)


def sdpa_longformer(q, k, v, q_g, k_g, v_g, window, global_mask, key_padding_mask):
    """The same attention from two calls of PyTorch's SDPA with the combined mask (local rows; global
    rows), for the half-precision comparison. Rows without a key (padding) are 0."""
    B, L = global_mask.shape
    is_global = global_mask & ~key_padding_mask
    local = window_mask(L, window)[None] | is_global[:, None, :]  # B x L x L: window and global columns
    allowed = torch.where(is_global[:, :, None], True, local) & ~key_padding_mask[:, None, :]

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)),
                                              attn_mask=allowed[:, None]).transpose(1, 2)

    out = torch.where(is_global[:, :, None, None], sdpa(q_g, k_g, v_g), sdpa(q, k, v))
    return out.masked_fill(key_padding_mask[:, :, None, None], 0.0)


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("std", (1.0, 4.0, 16.0))
def test_half_precision_no_worse_than_sdpa(dtype, std):
    """float16/bfloat16: the max error against float64 on the same rounded inputs is at most 1.5x
    that of SDPA with the combined mask (score spreads 1, 4, 16)."""
    g = torch.Generator().manual_seed(int(std))
    B, L, H, d = 2, 128, 2, 64
    tensors = [torch.randn(B, L, H, d, generator=g, dtype=torch.float64) for _ in range(6)]
    tensors[0], tensors[3] = tensors[0] * std, tensors[3] * std  # q and q_g: the score spread
    tensors = [x.to(dtype) for x in tensors]
    global_mask = torch.rand(B, L, generator=g) < 0.05
    global_mask[:, 0] = True
    padding = torch.zeros(B, L, dtype=torch.bool)
    padding[1, 100:] = True
    q, k, v, q_g, k_g, v_g = tensors
    kwargs = dict(global_mask=global_mask, key_padding_mask=padding, q_global=q_g, k_global=k_g, v_global=v_g)
    ref = dense_longformer_attention(q.double(), k.double(), v.double(), 16,
                                     **{n: x.double() if x.is_floating_point() else x for n, x in kwargs.items()})
    out = longformer_attention(q, k, v, 16, **kwargs)
    assert out.dtype == dtype
    ours = (out.double() - ref).abs().max().item()
    theirs = (sdpa_longformer(*tensors, 16, global_mask, padding).double() - ref).abs().max().item()
    assert ours <= 1.5 * theirs


def bad(**changes):
    """longformer_attention on the tiny problem with some arguments replaced."""
    (q, k, v, q_g, k_g, v_g), kwargs = tiny(dtype=torch.float32)
    arguments = dict(q=q, k=k, v=v, window=2, q_global=q_g, k_global=k_g, v_global=v_g, **kwargs)
    arguments.update(changes)
    return lambda: longformer_attention(**arguments)


@pytest.mark.parametrize("call, error, message", [
    (bad(global_mask=None), TypeError, r"global_mask must be a bool torch\.Tensor \[B, L\] \(True = global token\), got NoneType"),
    (bad(global_mask=torch.zeros(2, 7, dtype=torch.long)), TypeError, r"global_mask must have dtype torch\.bool \(True = global token\), got torch\.int64"),
    (bad(global_mask=torch.zeros(2, 8, dtype=torch.bool)), ValueError, r"global_mask must have shape \[B, L\] = \[2, 7\], got \[2, 8\]"),
    (bad(global_mask=torch.zeros(7, dtype=torch.bool)), ValueError, r"global_mask must have shape \[B, L\] = \[2, 7\], got \[7\]"),
    (bad(global_mask=torch.zeros(2, 7, dtype=torch.bool, device="meta")), ValueError, r"global_mask must be on the same device as q \(cpu\), got meta"),
    (bad(q_global=torch.zeros(2, 7, 2, 4)), ValueError, r"q_global must have the shape of q \(2, 7, 2, 3\), got \(2, 7, 2, 4\)"),
    (bad(k_global=torch.zeros(2, 7, 2, 3, dtype=torch.float64)), TypeError, r"k_global must have the dtype of k \(torch\.float32\), got torch\.float64"),
    (bad(v_global=torch.zeros(2, 7, 2, 2, device="meta")), ValueError, r"v_global must be on the device of v \(cpu\), got meta"),
    (bad(v_global=[[0.0]]), TypeError, r"v_global must be a torch\.Tensor of shape the shape of v, got list"),
    (bad(q_global=torch.zeros(2, 7, 2, 3, dtype=torch.int32)), TypeError, r"q_global must have dtype float64, float32, float16 or bfloat16"),
    (bad(window=0), ValueError, r"window must be"),
    (bad(key_padding_mask=torch.zeros(2, 7)), TypeError, r"key_padding_mask must have dtype torch\.bool"),
    (bad(dropout=1.0), ValueError, r"dropout must be a probability in \[0, 1\), got 1\.0"),
])
def test_bad_input_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --- Hugging Face: the patched model equals the original ------------------------------------

transformers = pytest.importorskip("transformers")  # pinned in requirements.txt; the package needs only torch
from transformers import (  # noqa: E402
    LongformerConfig,
    LongformerForQuestionAnswering,
    LongformerForSequenceClassification,
    LongformerModel,
)

SEP, PAD = 2, 1  # LongformerConfig's sep_token_id and pad_token_id


def config(**changes):
    """A small Longformer: 3 layers of windows W = 4, 8, 4 (one-sided 2, 4, 2), hidden 32, 4 heads,
    no dropout. Inputs are padded to a multiple of 8 by the model."""
    settings = dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                    attention_window=[4, 8, 4], max_position_embeddings=64, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, num_labels=2)
    return LongformerConfig(**{**settings, **changes})


def pair(cls, **changes):
    """(original, patched) models of class ``cls``, the same random weights."""
    torch.manual_seed(0)
    original = cls(config(**changes)).eval()
    return original, patch_hf_longformer(copy.deepcopy(original))


def inputs(cls):
    """Three sequences of 21 tokens (not a multiple of 8), the second and third padded at the end.

    LongformerModel gets a global mask with different counts per row (3, 4, 1), one global token
    inside a padded tail; the task heads choose their own: the first token for classification,
    the question (the tokens before the first of three separators) for question answering.
    """
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (3, 21), generator=g)
    attention_mask = torch.ones(3, 21, dtype=torch.long)
    attention_mask[1, 15:] = attention_mask[2, 9:] = 0
    if cls is LongformerForQuestionAnswering:  # question, two separators, context, separator
        for row, (question, end) in enumerate([(4, 21), (2, 15), (5, 9)]):
            ids[row, [question, question + 1, end - 1]] = SEP
    ids[attention_mask == 0] = PAD
    kwargs = dict(input_ids=ids, attention_mask=attention_mask)
    if cls is LongformerModel:
        global_mask = torch.zeros(3, 21, dtype=torch.long)
        global_mask[0, [0, 7, 20]] = 1
        global_mask[1, [0, 3, 4, 17]] = 1  # 17 is padding: no global token
        global_mask[2, 8] = 1
        kwargs["global_attention_mask"] = global_mask
    return kwargs


def outputs(result):
    """The float tensors a model returned (hidden states, pooled output, logits), by name."""
    return {name: x for name, x in result.items() if isinstance(x, torch.Tensor) and x.is_floating_point()}


HEADS = (LongformerModel, LongformerForSequenceClassification, LongformerForQuestionAnswering)


@pytest.mark.parametrize("cls", HEADS)
def test_hugging_face_eval_outputs_equal(cls):
    original, patched = pair(cls)
    assert not any(type(m).__name__ == "LongformerSelfAttention" for m in patched.modules())
    with torch.no_grad():
        expected, actual = outputs(original(**inputs(cls))), outputs(patched(**inputs(cls)))
    assert expected.keys() == actual.keys() and expected
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-5, msg=name)


def test_hugging_face_without_global_tokens():
    original, patched = pair(LongformerModel)
    kwargs = inputs(LongformerModel)
    del kwargs["global_attention_mask"]
    with torch.no_grad():
        torch.testing.assert_close(patched(**kwargs).last_hidden_state, original(**kwargs).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", HEADS)
def test_hugging_face_train_gradients_equal(cls):
    """Train mode (dropout 0): the gradient of every parameter equals the original's."""
    original, patched = pair(cls)
    g = torch.Generator().manual_seed(2)
    directions = {name: torch.randn(x.shape, generator=g) for name, x in outputs(original(**inputs(cls))).items()}
    grads = []
    for model in (original, patched):
        model.train()
        loss = sum((x * directions[name]).sum() for name, x in outputs(model(**inputs(cls))).items())
        loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    expected, actual = grads
    assert expected.keys() == actual.keys()
    scale = max(x.abs().max().item() for x in expected.values() if x is not None)
    for name, grad in expected.items():
        if grad is None:  # a parameter the forward does not use (the pooler of a task head)
            assert actual[name] is None, name
            continue
        torch.testing.assert_close(actual[name], grad, rtol=1e-4, atol=1e-6 * scale, msg=name)


def test_patching_keeps_the_weights():
    original, _ = pair(LongformerModel)
    before = {name: p for name, p in original.named_parameters()}
    patched = patch_hf_longformer(original)
    assert patched is original
    after = dict(patched.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert patched.encoder.layer[1].attention.self.window == (4, 4)  # W = 8: four keys on each side


def test_patching_a_patched_model_again_changes_nothing():
    _, patched = pair(LongformerModel)
    layers = [layer.attention.self for layer in patched.encoder.layer]
    kwargs = inputs(LongformerModel)
    with torch.no_grad():
        before = patched(**kwargs).last_hidden_state
        assert patch_hf_longformer(patched) is patched
        assert [layer.attention.self for layer in patched.encoder.layer] == layers  # the same modules
        assert torch.equal(patched(**kwargs).last_hidden_state, before)


def test_hugging_face_train_mode_drops_attention():
    """attention_probs_dropout_prob = 0.1 in train mode: the same seed gives the same output,
    another seed another, neither is eval mode's output, and every parameter the forward uses
    gets a finite gradient."""
    _, patched = pair(LongformerModel, attention_probs_dropout_prob=0.1)
    kwargs = inputs(LongformerModel)
    with torch.no_grad():
        evaluated = patched(**kwargs).last_hidden_state
    patched.train()

    def run(seed):
        torch.manual_seed(seed)
        return patched(**kwargs).last_hidden_state

    first = run(0)
    assert torch.equal(first, run(0)) and not torch.equal(first, run(1))
    assert not torch.allclose(first, evaluated, atol=1e-3)
    first.square().sum().backward()
    grads = {name: p.grad for name, p in patched.named_parameters() if "pooler" not in name}
    assert all(g is not None and g.isfinite().all() for g in grads.values()), [n for n, g in grads.items() if g is None]


def test_hugging_face_refusals():
    original, patched = pair(LongformerModel, attention_probs_dropout_prob=0.1)
    kwargs = inputs(LongformerModel)
    with pytest.raises(ValueError, match=r"output_attentions=True is not supported"):
        patched(**kwargs, output_attentions=True)
    with torch.no_grad():  # eval mode: dropout is off, and the outputs agree
        torch.testing.assert_close(patched(**kwargs).last_hidden_state, original(**kwargs).last_hidden_state,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"model holds no LongformerSelfAttention"):
        patch_hf_longformer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        patch_hf_longformer("allenai/longformer-base-4096")



# --- The benchmark: its committed results and a tiny run --------------------------------------


LONGFORMER_RUNS = sorted((Path(__file__).resolve().parent.parent / "book" / "data").glob("cpu-longformer-model*.json"))


@pytest.mark.parametrize("path", LONGFORMER_RUNS, ids=lambda p: p.name)
def test_committed_benchmark_results_follow_their_schema(path):
    from swa_tutorial.bench.longformer_model import MODELS, SCHEMA

    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["provenance"]["git_commit"] and doc["config"]["seq_len"] == 4096
    assert doc["max_abs_difference"] < 1e-4
    for name in MODELS:
        r = doc["results"][name]
        assert len(r["times_s"]) == doc["config"]["reps"] and r["median_s"] > 0 and r["iqr_s"] >= 0
        assert len(r["peak_bytes_per_process"]) == doc["config"]["rounds"] and r["peak_bytes"] > 0
    times = doc["results"]
    pairs = [p / o for o, p in zip(times["original"]["times_s"], times["patched"]["times_s"])]
    assert doc["ratio_patched_to_original"]["per_pair"] == pairs


def test_benchmark_timing_checks_and_times_both_models():
    from swa_tutorial.bench.longformer_model import timing

    spec = dict(seq_len=40, layers=1, hidden=16, heads=2, window=8, globals=2, batch=1, threads=1, reps=2)
    result = timing(spec)
    assert result["max_abs_difference"] < 1e-5
    assert all(len(result[kind][name]) == 2 for kind in ("times_s", "cpu_times_s") for name in ("original", "patched"))
