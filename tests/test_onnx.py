"""ONNX: torch.onnx.export (dynamo=True) with a dynamic sequence length, run by onnxruntime.

Two exports, each traced at one length and run by onnxruntime on the CPU at three others, equal
to eager PyTorch within float32 tolerance: a module calling sliding_window_attention (a dilated
asymmetric window with padding, and causal attention), free L from 1 up; and a tiny Hugging Face
Longformer patched by patch_hf_longformer, with global tokens in some inputs and none in
others. Hugging Face's model pads the input to a multiple of its attention window with a Python
branch on L mod that window, so its exported length is that multiple (8 n, n >= 1), as a
tokenizer's ``pad_to_multiple_of`` gives it. A third: a tiny Mistral whose attention is the
package's through transformers' attention interface, left-padded, free L, against the same
model with transformers' own "eager" attention.
"""

from __future__ import annotations

import onnxruntime
import torch
from torch.export import Dim
from transformers import LongformerConfig, LongformerModel, MistralConfig, MistralModel

from swa_tutorial import hf, sliding_window_attention
from swa_tutorial.integrations.longformer import patch_hf_longformer


def _run(onnx_program, inputs) -> torch.Tensor:
    """The first output of ``onnx_program`` on ``inputs`` (tensors), run by onnxruntime."""
    session = onnxruntime.InferenceSession(onnx_program.model_proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    feed = {node.name: x.numpy() for node, x in zip(session.get_inputs(), inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


def _input_lengths(onnx_program) -> set[str]:
    """The names ONNX gives the inputs' sequence dimension: a name, not a number, if dynamic."""
    return {node.type.tensor_type.shape.dim[1].dim_param for node in onnx_program.model_proto.graph.input}


class Attention(torch.nn.Module):
    def forward(self, q, k, v, mask):
        dilated = sliding_window_attention(q, k, v, (3, 1), key_padding_mask=mask, dilation=2)
        return dilated + sliding_window_attention(q, k, v, (None, 0))


def _problem(L):
    gen = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, L, 2, 4, generator=gen) for _ in range(3))
    return q, k, v, torch.rand(2, L, generator=gen) < 0.2


def test_a_module_calling_the_attention_runs_in_onnxruntime_at_any_length():
    program = torch.onnx.export(Attention(), _problem(21), dynamo=True, dynamic_shapes=({1: Dim("L", min=1)},) * 4)
    (length,) = _input_lengths(program)
    assert length and not length.isdigit()
    for L in (1, 6, 300):  # below the window, about it, far above it
        inputs = _problem(L)
        torch.testing.assert_close(_run(program, inputs), Attention()(*inputs), rtol=1e-5, atol=1e-5)


class Encoder(torch.nn.Module):
    """The model's last hidden state [B, L, 32], from the three tensors a tokenizer gives."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, global_attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          global_attention_mask=global_attention_mask).last_hidden_state


def _tokens(L, global_tokens: bool):
    gen = torch.Generator().manual_seed(L)
    input_ids = torch.randint(3, 50, (2, L), generator=gen)
    attention_mask = torch.ones(2, L, dtype=torch.long)
    attention_mask[1, L - L // 3:] = 0  # the second sequence is shorter: padding at its end
    global_attention_mask = torch.zeros(2, L, dtype=torch.long)
    if global_tokens:
        global_attention_mask[0, 0] = 1  # [CLS]-like
        global_attention_mask[1, :3] = 1  # a question's tokens
    return input_ids, attention_mask, global_attention_mask


def test_a_patched_hugging_face_longformer_runs_in_onnxruntime():
    config = LongformerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                              intermediate_size=64, attention_window=[8], max_position_embeddings=96,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    encoder = Encoder(patch_hf_longformer(LongformerModel(config).eval()))
    length = 8 * Dim("n", min=1, max=10)
    program = torch.onnx.export(encoder, _tokens(24, True), dynamo=True, dynamic_shapes=({1: length},) * 3)
    (name,) = _input_lengths(program)
    assert name and not name.isdigit()
    for L, global_tokens in ((8, True), (40, False), (72, True)):
        inputs = _tokens(L, global_tokens)
        with torch.no_grad():
            expected = encoder(*inputs)
        torch.testing.assert_close(_run(program, inputs), expected, rtol=1e-5, atol=1e-5)


class Decoder(torch.nn.Module):
    """A decoder's last hidden state [B, L, 32] from input_ids and the 2D attention_mask."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def _left_padded(L):
    gen = torch.Generator().manual_seed(L)
    attention_mask = torch.ones(2, L, dtype=torch.long)
    attention_mask[1, : L // 3] = 0  # the second prompt is shorter: padding on the left, as for generation
    return torch.randint(0, 64, (2, L), generator=gen), attention_mask


def test_a_mistral_with_the_attention_interface_runs_in_onnxruntime():
    """Window 8 keys, grouped heads (4 query heads, 2 kv heads), two layers; traced at 21 tokens,
    run at 3 (inside the window), 17 and 50; equal to transformers' eager attention on every
    real token. Exported, the padding is always applied as a mask (the program cannot branch on
    whether a row has any)."""
    hf.register()
    config = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                           max_position_embeddings=256)
    torch.manual_seed(0)
    model = MistralModel(config).eval()
    model.set_attn_implementation("swa_tutorial")
    decoder = Decoder(model)
    program = torch.onnx.export(decoder, _left_padded(21), dynamo=True,
                                dynamic_shapes=({1: Dim("L", min=1, max=200)},) * 2)
    (name,) = _input_lengths(program)
    assert name and not name.isdigit()
    model.set_attn_implementation("eager")
    for L in (3, 17, 50):
        inputs = _left_padded(L)
        with torch.no_grad():
            expected = decoder(*inputs)
        real = inputs[1].bool()
        torch.testing.assert_close(_run(program, inputs)[real], expected[real], rtol=1e-5, atol=1e-5)
