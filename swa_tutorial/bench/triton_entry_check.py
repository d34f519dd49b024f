"""The Triton kernel through the entry point on a device: every argument of FlashAttention's call.

    python -m swa_tutorial.bench.triton_entry_check                  # CUDA: every case
    TRITON_INTERPRET=1 python -m swa_tutorial.bench.triton_entry_check --device cpu --tiny

Each :class:`EntryCase` calls ``sliding_window_attention(..., backend="triton")`` with one mix of
window form (int, pair, causal, unbounded side), dilation, key padding, grouped heads, queries
shorter or longer than the keys (end-aligned), softcap, sinks and packed sequences, and compares
its out, lse and the gradients of sum(out g_out) + sum(lse g_lse) in q, k, v (and sinks) with
the same call through ``backend="dense"`` in float64 on the same (rounded) inputs and device:
the entry point does the rest of the work (cropping, padding, folding, packing, the sinks)
around either backend, so the kernel's part is what differs.

* float64: within 1e-10 (gradients: times their largest entry, at least 1).
* float32, float16, bfloat16 (g_lse = 0): each of out, dq, dk, dv within 1.5 (e + u b) + u b,
  with e the error of ``backend="dense"`` in that dtype (float32 scores, only the results
  rounded) and u b the first-order effect of rounding P and dS to the dtype before their
  products, as the kernel does: with A(X) the attention's weights applied to values X (the
  dense call with v = X, so every argument above shapes P) and its transpose A^T(Y) (the
  gradient in X with upstream Y),

      b_out = A(|v|),   b_dv = A^T(|dO|),
      b_dq = scale (|dO| . A(|v| x |k|) + |D| A(|k|)),   b_dk = scale (|v| . A^T(|dO| x |q|) + A^T(|D| |q|)),

  from |dS_ij| <= P_ij (|dO_i| . |v_j| + |D_i|), D = rowsum(dO O) (x an outer product over the
  feature columns, . a contraction over the value columns). lse within 1.5 times dense's error
  or u32 (|lse| + Lk + 2), whichever is larger; the sinks' gradient within 1.5 times dense's
  error plus u sum_i |dO_i| . b_out_i per head (a sink's gradient takes out's error through
  dO . O, with a weight of at most 1 per row).

Everywhere: out, lse and gradients finite (lse -inf allowed where the reference has it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.bench.triton_check import UNIT_ROUNDOFF, run_cases


@dataclass(frozen=True)
class EntryCase:
    """One call: q [B, Lq, H, d], k [B, Lk, H_kv, d], v [B, Lk, H_kv, d] (B = 1 and rank 3 when
    packed: ``docs`` holds each document's (Lq, Lk), and Lq, Lk are their sums)."""

    window: object  # an int, or a (left, right) pair, a side None for unbounded
    seq_len_q: int
    seq_len_k: int
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 16
    batch: int = 1
    dilation: object = 1
    padding: bool = False
    softcap: float = 0.0
    sinks: bool = False
    docs: tuple = ()
    dtype: str = "float64"
    seed: int = 0

    def inputs(self, device):
        """The leaves (q, k, v and sinks or None, float64 on the CPU, then rounded to the dtype and
        moved), the keywords of the call, and the upstream gradients g_out, g_lse."""
        g = torch.Generator().manual_seed(self.seed)
        lead = () if self.docs else (self.batch,)
        H, H_kv, d = self.heads, self.kv_heads, self.head_dim
        q = torch.randn(*lead, self.seq_len_q, H, d, generator=g, dtype=torch.float64)
        k, v = (torch.randn(*lead, self.seq_len_k, H_kv, d, generator=g, dtype=torch.float64) for _ in range(2))
        sinks = torch.randn(H, generator=g, dtype=torch.float64) if self.sinks else None
        kwargs = dict(dilation=self.dilation, softcap=self.softcap)
        if self.padding:
            kwargs["key_padding_mask"] = (torch.rand(self.batch, self.seq_len_k, generator=g) < 0.3).to(device)
        if self.docs:
            for side, lengths in (("q", [lq for lq, _ in self.docs]), ("k", [lk for _, lk in self.docs])):
                starts = torch.tensor([0, *lengths]).cumsum(0)
                kwargs[f"cu_seqlens_{side}"] = starts.to(device=device, dtype=torch.int32)
        g_out = torch.randn(*q.shape[:-1], d, generator=g, dtype=torch.float64)
        g_lse = torch.randn(*q.shape[:-1], generator=g, dtype=torch.float64)
        dtype = getattr(torch, self.dtype)
        leaves = [None if x is None else x.to(device, dtype) for x in (q, k, v, sinks)]
        return leaves, kwargs, g_out.to(device), g_lse.to(device)


def _attention(backend, window, kwargs):
    """(q, k, v, sinks) -> (out, lse) through the entry point."""

    def attention(q, k, v, sinks):
        return sliding_window_attention(q, k, v, window, backend=backend, return_lse=True, sinks=sinks, **kwargs)

    return attention


def _run(attention, leaves, g_out, g_lse):
    """out, lse and the gradients of sum(out g_out) + sum(finite lse g_lse) in the leaves given."""
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in leaves]
    out, lse = attention(*leaves)
    loss = (out.double() * g_out).sum() + torch.where(torch.isinf(lse), 0.0, lse.double() * g_lse).sum()
    wrt = [x for x in leaves if x is not None]
    return out.detach(), lse.detach(), torch.autograd.grad(loss, wrt)


def _largest(x) -> float:
    return x.abs().max().item() if x.numel() else 0.0


def _error(x, ref) -> float:
    return _largest(x.double().nan_to_num(neginf=0.0) - ref.nan_to_num(neginf=0.0))


def rounding_bounds(attention, q, k, v, sinks, g_out, scale):
    """b_out, b_dq, b_dk, b_dv of the module docstring (float64), the weights from ``attention``."""
    k_, v_ = k.abs(), v.abs()

    def weights(x):  # A(X): the weights applied to values x [.., Lk, H_kv, n]
        return attention(q, k, x, sinks)[0]

    def transposed(y, width):  # A^T(Y): the gradient in values of width n of sum(A(X) y)
        x = torch.zeros(*k.shape[:-1], width, dtype=k.dtype, device=k.device, requires_grad=True)
        (grad,) = torch.autograd.grad((weights(x) * y).sum(), x)
        return grad

    with torch.no_grad():
        out = weights(v)
    d, dv = k.shape[-1], v.shape[-1]
    row_term = (g_out * out).sum(dim=-1, keepdim=True).abs()  # |D|, [.., Lq, H, 1]
    outer_vk = (v_[..., :, None] * k_[..., None, :]).flatten(-2)  # |v| x |k|, [.., Lk, H_kv, dv d]
    with torch.no_grad():
        b_out = weights(v_)
        b_dq = scale * ((g_out.abs()[..., :, None] * weights(outer_vk).unflatten(-1, (dv, d))).sum(dim=-2)
                        + row_term * weights(k_))
    outer_oq = (g_out.abs()[..., :, None] * q.abs()[..., None, :]).flatten(-2)  # |dO| x |q|
    b_dk = scale * ((v_[..., :, None] * transposed(outer_oq, dv * d).unflatten(-1, (dv, d))).sum(dim=-2)
                    + transposed(row_term * q.abs(), d))
    b_dv = transposed(g_out.abs(), dv)
    return b_out, b_dq, b_dk, b_dv


def check(case: EntryCase, device) -> dict:
    """Run one case on ``device``: {"ok", "errors", "allowed", ...}; see the module docstring."""
    dtype = getattr(torch, case.dtype)
    leaves, kwargs, g_out, g_lse = case.inputs(device)
    low = dtype != torch.float64
    if low:
        g_out, g_lse = g_out.to(dtype).double(), torch.zeros_like(g_lse)
    out, lse, grads = _run(_attention("triton", case.window, kwargs), leaves, g_out, g_lse)
    exact = [None if x is None else x.double() for x in leaves]
    reference = _attention("dense", case.window, kwargs)
    ref_out, ref_lse, ref_grads = _run(reference, exact, g_out, g_lse)
    names = ["out", "lse", "dq", "dk", "dv", "dsinks"][: 5 + case.sinks]
    ref = dict(zip(names, (ref_out, ref_lse, *ref_grads)))
    errors = {name: _error(x, ref[name]) for name, x in zip(names, (out, lse, *grads))}
    finite_lse = torch.isfinite(lse) | (torch.isneginf(lse) & torch.isneginf(ref_lse))
    finite = bool(torch.isfinite(out).all() and finite_lse.all() and all(torch.isfinite(g).all() for g in grads))
    if not low:
        allowed = {name: 1e-10 * (1.0 if name in ("out", "lse") else max(1.0, _largest(ref[name]))) for name in names}
    else:
        dense_out, dense_lse, dense_grads = _run(_attention("dense", case.window, kwargs), leaves, g_out, g_lse)
        dense_errors = {name: _error(x, ref[name]) for name, x in zip(names, (dense_out.to(dtype), dense_lse, *dense_grads))}
        u = UNIT_ROUNDOFF[dtype]
        scale = case.head_dim**-0.5
        bounds = rounding_bounds(reference, *exact, g_out, scale)
        allowed = {name: 1.5 * (dense_errors[name] + u * _largest(b)) + u * _largest(b)
                   for name, b in zip(("out", "dq", "dk", "dv"), bounds)}
        allowed["lse"] = max(1.5 * dense_errors["lse"],
                             UNIT_ROUNDOFF[torch.float32] * (_largest(ref_lse[torch.isfinite(ref_lse)]) + case.seq_len_k + 2))
        if case.sinks:
            per_head = (g_out.abs() * bounds[0]).sum(dim=-1).flatten(0, -2).sum(dim=0)  # [H]
            allowed["dsinks"] = 1.5 * dense_errors["dsinks"] + u * _largest(per_head)
    ratio = max(errors[n] / allowed[n] if allowed[n] > 0 else 0.0 if errors[n] == 0 else float("inf") for n in names)
    return dict(ok=finite and ratio <= 1, finite=finite, errors=errors, allowed=allowed, worst_ratio=ratio)


def _cases(dtypes, specs):
    return [EntryCase(**spec, dtype=dtype, seed=i) for i, spec in enumerate(specs) for dtype in dtypes]


DTYPES = ("float64", "float32", "bfloat16", "float16")
GPU_SPECS = [
    dict(window=64, seq_len_q=300, seq_len_k=300, heads=4, kv_heads=2, batch=2, padding=True),  # int window
    dict(window=(100, 20), seq_len_q=300, seq_len_k=300, heads=4, kv_heads=4, dilation=[1, 2, 3, 1], padding=True),
    dict(window=(None, 0), seq_len_q=100, seq_len_k=300, heads=4, kv_heads=1, head_dim=64),  # causal, Lq < Lk
    dict(window=(127, 0), seq_len_q=1, seq_len_k=500, heads=8, kv_heads=2, head_dim=64, batch=2),  # decoding
    dict(window=(30, 30), seq_len_q=205, seq_len_k=200, heads=2, kv_heads=1, padding=True),  # Lq > Lk
    dict(window=(64, 0), seq_len_q=400, seq_len_k=400, heads=8, kv_heads=2, head_dim=64, softcap=30.0, sinks=True),
    dict(window=(40, 0), seq_len_q=268, seq_len_k=268, heads=4, kv_heads=2, softcap=5.0, sinks=True,
         docs=((1, 1), (50, 50), (200, 200), (17, 17))),  # packed, with a one-token document
    dict(window=(16, 16), seq_len_q=121, seq_len_k=200, heads=4, kv_heads=4, docs=((1, 30), (20, 20), (100, 150))),
]
GPU_CASES = _cases(DTYPES, GPU_SPECS)
TINY_CASES = [
    EntryCase((5, 2), 20, 40, heads=4, kv_heads=2, dilation=2, padding=True, softcap=5.0, sinks=True, dtype="bfloat16"),
    EntryCase((6, 0), 27, 37, heads=2, kv_heads=1, softcap=3.0, sinks=True, docs=((1, 1), (6, 16), (20, 20))),
    EntryCase(4, 23, 18, heads=2, kv_heads=2, padding=True, batch=2, dtype="float32"),
]


def main(argv=None) -> int:
    prog = "python -m swa_tutorial.bench.triton_entry_check"
    return run_cases((GPU_CASES, TINY_CASES), check, argv, prog, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
