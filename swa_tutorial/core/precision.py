"""The precision contract, in one place: what dtype the arithmetic runs in, and the output's.

For float16 and bfloat16 inputs the scores, the softmax and the P x V sums are kept in float32
(float64 stays float64): :func:`accumulation_dtype`. Autocast is switched off around the package's
arithmetic (:func:`without_autocast`), and only the result is rounded to the input's dtype
(:class:`OutputCast`, through ``cast_output``).
"""

from __future__ import annotations

import contextlib

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores, softmax and sums are kept in: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def without_autocast(device: torch.device):
    """A context in which ``torch.autocast`` is off for ``device``'s type.

    Autocast would run the float32 products of the precision contract in 16 bits; the package
    computes in the dtype of its inputs whatever autocast says (as the float32 islands of other
    attention code do), so its error stays that of the contract.
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class OutputCast(torch.autograd.Function):
    """The result in the input's dtype as a new contiguous [B, L, H, d_v] tensor, whose backward
    hands the backends a contiguous gradient: ``out.sum().backward()`` sends back an expanded
    (zero-stride) tensor, which would otherwise reach the backward's matrix products as is.

    Always a copy, also when the backend's result is already contiguous in the input's dtype: a
    backend may keep that result for its backward (the tiles and the kernel do), and a model may
    change the attention's output in place (a residual ``out += x``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, dtype):
        return x.to(dtype, memory_format=torch.contiguous_format, copy=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.dtype, ctx.out_dtype = inputs[0].dtype, output.dtype

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous().to(ctx.dtype), None

    @staticmethod
    def jvp(ctx, tangent, _dtype_tangent):
        """Forward mode (torch.func.jvp, jacfwd): the cast is linear, so is its tangent's."""
        return tangent.to(ctx.out_dtype, memory_format=torch.contiguous_format)


def cast_output(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """:class:`OutputCast` of x [B, L, H, d_v] to ``dtype``; while Dynamo traces (torch.compile),
    which cannot trace an autograd function with a jvp, the same copy as a plain tensor op."""
    if torch.compiler.is_dynamo_compiling():
        return x.to(dtype, memory_format=torch.contiguous_format, copy=True)
    return OutputCast.apply(x, dtype)
