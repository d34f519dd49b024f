"""``attn_implementation="swa_tutorial"`` in Hugging Face models, against ``"eager"`` on the same weights.

Tiny models of every family with sliding windows in transformers 5.24 (the version
requirements.txt pins), built from configs with random weights, no download: hidden 32, two
layers (one sliding, one full where the family mixes them), vocabulary 100, window 8. Each is
compared with transformers' own "eager" attention, which builds the full mask: logits of a padded
batch (left and right padding) and every parameter's gradient, greedy generation past the window
with the dynamic and the static cache, packed sequences against the sequences run apart.
Outputs are compared on the real tokens only (what a padding query gets is defined by no
implementation).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")  # pinned in requirements.txt; the package needs only torch

from transformers import DataCollatorWithFlattening  # noqa: E402
from transformers.masking_utils import (  # noqa: E402
    blockwise_overlay,
    causal_mask_function,
    chunked_causal_mask_function,
    or_masks,
)

from cases import assert_dropped_and_rescaled  # noqa: E402
from swa_tutorial import hf  # noqa: E402

NAME = hf.register()
WINDOW = 8
COMMON = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER = dict(num_key_value_heads=2, head_dim=8)
MIXED = dict(layer_types=["sliding_attention", "full_attention"])
FAMILIES = {  # name: (config class, model class, the family's own settings)
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(DECODER, sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(DECODER, use_sliding_window=True, sliding_window=WINDOW,
                                                      max_window_layers=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(DECODER, sliding_window=WINDOW, query_pre_attn_scalar=8,
                                                         attn_logit_softcapping=2.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(DECODER, **MIXED, sliding_window=WINDOW,
                                                             query_pre_attn_scalar=8)),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(DECODER, sliding_window=WINDOW, num_local_experts=4,
                                                         num_experts_per_tok=2)),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", dict(DECODER, **MIXED, sliding_window=WINDOW)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(DECODER, sliding_window=WINDOW)),
    "modernbert": ("ModernBertConfig", "ModernBertForMaskedLM", dict(local_attention=WINDOW, global_attn_every_n_layers=2)),
}
DECODERS = [name for name in FAMILIES if name != "modernbert"]
_built: dict = {}


def model(family: str, **overrides):
    """The family's tiny model (random weights from seed 0), in eval mode, float32."""
    key = (family, tuple(sorted(overrides.items())))
    if key not in _built:
        config_class, model_class, own = FAMILIES[family]
        transformers.logging.set_verbosity_error()  # no notices about the tiny configs
        config = getattr(transformers, config_class)(**COMMON, **{**own, **overrides})
        torch.manual_seed(0)
        _built[key] = getattr(transformers, model_class)(config).eval()
    return _built[key]


def padded_batch(L: int = 20):
    """Three rows of L random tokens: unpadded, left-padded by 5, right-padded by 4."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (3, L), generator=g)
    mask = torch.ones(3, L, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, -4:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def run(net, impl: str, **kwargs) -> torch.Tensor:
    net.set_attn_implementation(impl)
    return net(**kwargs).logits


def assert_close_relative(actual, expected, rel=1e-4, what="output"):
    """max |actual - expected| <= rel * max |expected| (float32 against float32)."""
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= rel * max(scale, 1e-6), f"{what}: max error {error:.3g}, largest value {scale:.3g}"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_of_a_padded_batch_equal_eager(family):
    net, (ids, mask) = model(family), padded_batch()
    with torch.no_grad():
        expected, actual = (run(net, impl, input_ids=ids, attention_mask=mask) for impl in ("eager", NAME))
    real = mask.bool()
    assert_close_relative(actual[real], expected[real])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_gradient_equals_eager_in_train_mode(family):
    net, (ids, mask) = model(family), padded_batch(16)
    net.train()
    grads = {}
    try:
        for impl in ("eager", NAME):
            net.zero_grad()
            logits = run(net, impl, input_ids=ids, attention_mask=mask)
            (logits[mask.bool()] * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()
            grads[impl] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    finally:
        net.eval()
    assert grads[NAME].keys() == grads["eager"].keys() and len(grads["eager"]) > 10
    for name, expected in grads["eager"].items():
        assert_close_relative(grads[NAME][name], expected, what=f"gradient of {name}")


@pytest.mark.parametrize("cache", [None, "static"])
@pytest.mark.parametrize("family", DECODERS)
def test_greedy_generation_past_the_window_equals_eager(family, cache):
    """Batch 2, the second prompt left-padded; 12 prompt tokens and 24 new ones, the window 8."""
    net = model(family)
    ids, mask = padded_batch(12)
    ids, mask = ids[:2], mask[:2]
    tokens = {}
    for impl in ("eager", NAME):
        net.set_attn_implementation(impl)
        tokens[impl] = net.generate(ids, attention_mask=mask, max_new_tokens=24, min_new_tokens=24, do_sample=False,
                                    cache_implementation=cache, pad_token_id=0)
    assert tokens[NAME].shape == (2, 12 + 24)
    assert torch.equal(tokens[NAME], tokens["eager"])


def test_sampled_generation_equals_eager_under_one_seed():
    net = model("gemma3")
    ids, mask = padded_batch(12)
    tokens = {}
    for impl in ("eager", NAME):
        net.set_attn_implementation(impl)
        torch.manual_seed(3)
        tokens[impl] = net.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=24, min_new_tokens=24,
                                    do_sample=True, top_k=0, pad_token_id=0)
    assert torch.equal(tokens[NAME], tokens["eager"])


@pytest.mark.parametrize("family", DECODERS)
def test_packed_sequences_equal_the_sequences_run_apart(family):
    """Documents of 7, 1 and 11 tokens in one row, position_ids restarting at each (no mask, no cache)."""
    net = model(family)
    net.set_attn_implementation(NAME)
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(3, 100, (1, n), generator=g) for n in (7, 1, 11)]
    positions = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    with torch.no_grad():
        packed = net(input_ids=torch.cat(docs, dim=1), position_ids=positions, use_cache=False).logits
        apart = torch.cat([run(net, "eager", input_ids=d, use_cache=False) for d in docs], dim=1)
    assert_close_relative(packed, apart)


def test_packed_rows_of_a_batch_and_flash_keyword_arguments():
    """Two rows, each packed; and DataCollatorWithFlattening's cu_seq_lens (return_flash_attn_kwargs)."""
    net = model("mistral")
    g = torch.Generator().manual_seed(4)
    docs = [torch.randint(3, 100, (n,), generator=g) for n in (5, 10, 1, 9, 6)]
    rows = [torch.cat(docs[:3]), torch.cat(docs[3:])]  # 16 and 15 tokens: pad the second with a document of 1
    rows[1] = torch.cat([rows[1], torch.tensor([7])])
    lengths = [[5, 10, 1], [9, 6, 1]]
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    with torch.no_grad():
        packed = run(net, NAME, input_ids=torch.stack(rows), position_ids=positions, use_cache=False)
        apart = [run(net, "eager", input_ids=d[None], use_cache=False)[0] for d in (*docs, torch.tensor([7]))]
        assert_close_relative(packed, torch.stack([torch.cat(apart[:3]), torch.cat(apart[3:])]))
        collate = DataCollatorWithFlattening(return_flash_attn_kwargs=True)
        batch = collate([{"input_ids": d.tolist()} for d in docs])
        batch.pop("labels")
        flat = run(net, NAME, **batch, use_cache=False)
        assert_close_relative(flat[0], torch.cat(apart[:5]))


def test_layers_get_their_own_windows_and_no_square_mask(monkeypatch):
    """Gemma 3 mixes a sliding layer (W = 8 keys: (7, 0)) and a full one ((None, 0)); the masks the
    layers receive are None or one label per key, never [Lq, Lk]."""
    seen = []
    real_attention = hf.attention

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((module.layer_idx, hf.layer_window(kwargs.get("sliding_window"), module.is_causal),
                     None if attention_mask is None else tuple(attention_mask.shape)))
        return real_attention(module, query, key, value, attention_mask, **kwargs)

    transformers.AttentionInterface.register(NAME, spy)
    try:
        net, (ids, mask) = model("gemma3"), padded_batch()
        with torch.no_grad():
            run(net, NAME, input_ids=ids, attention_mask=mask)
            net.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    finally:
        hf.register()
    assert {(layer, window) for layer, window, _ in seen} == {(0, (WINDOW - 1, 0)), (1, (None, 0))}
    assert {shape for _, _, shape in seen} <= {None, *((3, 1, 1, n) for n in range(1, 24))}
    assert (3, 1, 1, 20) in {shape for _, _, shape in seen}


def test_bidirectional_gemma3_equals_eager():
    """Gemma 3 with use_bidirectional_attention (EmbeddingGemma): both layers see both sides."""
    config = model("gemma3").config.to_dict() | {"use_bidirectional_attention": True, "sliding_window": WINDOW}
    torch.manual_seed(0)
    net = transformers.Gemma3TextModel(transformers.Gemma3TextConfig(**config)).eval()
    ids, mask = padded_batch()
    outputs = {}
    with torch.no_grad():
        for impl in ("eager", NAME):
            net.set_attn_implementation(impl)
            outputs[impl] = net(input_ids=ids, attention_mask=mask).last_hidden_state
    assert_close_relative(outputs[NAME][mask.bool()], outputs["eager"][mask.bool()])


class Layer(torch.nn.Module):
    """An attention layer as transformers' attention functions see one."""

    def __init__(self, is_causal=True):
        super().__init__()
        self.is_causal = is_causal
        self.config = transformers.MistralConfig()


def test_attention_dropout_keeps_one_minus_p_and_rescales():
    """One-hot values make the output the dropped, rescaled probabilities; the same seed repeats."""
    L, p = 48, 0.25
    g = torch.Generator().manual_seed(5)
    q, k = (torch.randn(4, 4, L, 8, generator=g) for _ in range(2))
    v = torch.eye(L)[None, None].expand(4, 4, L, L)
    probs, _ = hf.attention(Layer(), q, k, v, None, sliding_window=16)
    torch.manual_seed(0)
    dropped, _ = hf.attention(Layer(), q, k, v, None, dropout=p, sliding_window=16)
    torch.manual_seed(0)
    again, _ = hf.attention(Layer(), q, k, v, None, dropout=p, sliding_window=16)
    assert torch.equal(dropped, again)
    assert_dropped_and_rescaled(dropped, probs, p, tolerance=0.02)  # 10368 draws: 0.02 is 4.7 standard deviations


def test_an_exported_program_applies_the_labels_as_padding_and_refuses_packing(monkeypatch):
    """Traced for export, the attention cannot branch on the labels' values: it rotates the
    unwritten slots (-1) of a static cache to the front and masks them with the padding (0),
    which equals the eager path (it slices them off); cu_seq_lens is refused by name.
    tests/test_onnx.py exports a model."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 4, 12, 8, generator=g, dtype=torch.float64) for _ in range(3))
    labels = torch.ones(2, 1, 1, 12, dtype=torch.int8)
    labels[1, ..., :3] = 0
    labels[..., 10:] = -1
    eager, _ = hf.attention(Layer(), q[:, :, :10], k, v, labels, sliding_window=4)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    exported, _ = hf.attention(Layer(), q[:, :, :10], k, v, labels, sliding_window=4)
    torch.testing.assert_close(exported, eager, rtol=0, atol=1e-12)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    with pytest.raises(ValueError, match="an exported swa_tutorial model takes no packed documents"):
        hf.attention(Layer(), q, k, v, None, sliding_window=4, cu_seq_lens_q=cu, cu_seq_lens_k=cu)


def test_model_with_attention_dropout_trains_and_is_exact_in_eval():
    net, (ids, mask) = model("mistral", attention_dropout=0.5), padded_batch()
    with torch.no_grad():
        expected, actual = (run(net, impl, input_ids=ids, attention_mask=mask) for impl in ("eager", NAME))
        assert_close_relative(actual[mask.bool()], expected[mask.bool()])  # eval: no dropout
        net.train()
        try:
            torch.manual_seed(0)
            first = run(net, NAME, input_ids=ids, attention_mask=mask)
            torch.manual_seed(0)
            again = run(net, NAME, input_ids=ids, attention_mask=mask)
            other = run(net, NAME, input_ids=ids, attention_mask=mask)
        finally:
            net.eval()
    assert torch.equal(first, again) and not torch.allclose(first, other)


def test_register_is_idempotent_and_importing_the_package_imports_no_transformers():
    assert hf.register() == hf.register() == "swa_tutorial"
    assert transformers.AttentionInterface._global_mapping[NAME] is hf.attention
    code = "import sys, swa_tutorial; swa_tutorial.flash_attn_func; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_prepared_4d_mask_names_the_model():
    net, (ids, mask) = model("mistral"), padded_batch()
    square = torch.ones(3, 1, 20, 20, dtype=torch.bool).tril()
    net.set_attn_implementation(NAME)
    with pytest.raises(ValueError, match="model mistral: .*2D padding mask"):
        net(input_ids=ids, attention_mask=square)


@pytest.mark.parametrize(
    "mask_function, feature",
    [
        (chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long)), "chunked attention"),
        (or_masks(causal_mask_function, blockwise_overlay(torch.zeros(1, 6, dtype=torch.long))), "bidirectional blocks"),
        (or_masks(causal_mask_function, lambda b, h, q, kv: kv == 0), "test_hf"),
    ],
)
def test_mask_patterns_it_cannot_apply_name_the_model_and_the_feature(mask_function, feature):
    config = transformers.Llama4TextConfig()
    with pytest.raises(ValueError, match=f"model llama4_text: swa_tutorial cannot apply .*{feature}"):
        hf.key_labels(1, 6, 6, mask_function=mask_function, config=config)


def test_an_attention_bias_names_the_model_and_weights_are_not_returned():
    q = torch.randn(1, 4, 6, 8)
    with pytest.raises(ValueError, match="model mistral: .*position_bias"):
        hf.attention(Layer(), q, q, q, None, position_bias=torch.zeros(1, 4, 6, 6))
    with pytest.warns(UserWarning, match="output_attentions"):
        out, weights = hf.attention(Layer(), q, q, q, None, output_attentions=True)
    assert weights is None and out.shape == (1, 6, 4, 8)


def test_key_labels_describe_padding_and_unwritten_cache_slots():
    """Left padding of 2 in row 1; a static cache of 10 slots with 3 past tokens and 4 queries."""
    padding = torch.tensor([[True] * 7, [False, False] + [True] * 5])
    labels = hf.key_labels(2, 4, 10, q_offset=3, kv_offset=0, mask_function=causal_mask_function,
                           attention_mask=padding)
    assert labels.dtype == torch.int8 and labels.shape == (2, 1, 1, 10)
    assert labels[:, 0, 0].tolist() == [[1] * 7 + [-1] * 3, [0, 0] + [1] * 5 + [-1] * 3]
    assert hf.key_labels(2, 5, 5, mask_function=causal_mask_function) is None
