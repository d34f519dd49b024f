"""Correctness of the Triton kernel (backend "triton") on a device, against float64 dense attention.

    python -m swa_tutorial.bench.triton_check                  # CUDA: every case, triton-check.json
    TRITON_INTERPRET=1 python -m swa_tutorial.bench.triton_check --device cpu --tiny

Each :class:`Case` (shape, window, padding, dtype, input layout) runs the kernel's out and lse and
the gradients of sum(out * g_out) + sum(lse * g_lse) in q, k and v, and compares them with float64
dense attention on the same (rounded) inputs, on the same device:

* float64: out and lse within 1e-10, gradients within 1e-10 times their largest entry;
* float32, float16, bfloat16 (g_lse = 0: SDPA returns no lse): out, rounded to the input dtype as
  the entry point returns it, within 1.5 times the error of PyTorch's SDPA on the same inputs;
  lse within 1.5 times the error of a float32 logsumexp; each gradient within 1.5 times SDPA's
  error plus u times :func:`product_rounding_bounds` (u the dtype's unit roundoff), the first-order
  effect of rounding P and dS to the input dtype before their products, as FlashAttention does.

Everywhere: no NaN or inf except lse = -inf exactly where a query has no key. A case that fails to
compile or run is recorded with its error. The JSON file holds every error and bound.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from swa_tutorial.backends.triton import launcher as triton_kernel
from swa_tutorial.reference import allowed_keys, dense_attention

UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
PADDINGS = ("none", "random", "tail", "blind_queries", "padded_batch_row")


@dataclass(frozen=True)
class Case:
    """One problem: q, k [B, L, H, d], v [B, L, H, d_v], a (left, right) window and a padding kind.

    ``padding``: one of PADDINGS ("blind_queries": a run of padding as wide as the window, so that
    the queries in its middle see no key; "padded_batch_row": the last batch row all padding).
    ``layout``: "contiguous", or "strided" (q a transposed [B, H, L, d], k expanded over the batch
    with stride 0, v every other column of a wider tensor). ``score_std``: the standard deviation
    of q . k / sqrt(d). ``scale``: None for 1 / sqrt(d).
    """

    batch: int
    seq_len: int
    heads: int
    head_dim: int
    value_dim: int
    window: tuple[int, int]
    padding: str = "none"
    dtype: str = "float64"
    layout: str = "contiguous"
    score_std: float = 1.0
    scale: float | None = None
    seed: int = 0

    def inputs(self, device):
        """(q, k, v) as leaf tensors, the function making the attention's inputs from them, the
        upstream gradients g_out [B, L, H, d_v] and g_lse [B, L, H], and the padding mask."""
        B, L, H, d, dv = self.batch, self.seq_len, self.heads, self.head_dim, self.value_dim
        g = torch.Generator().manual_seed(self.seed)

        def randn(*shape, std=1.0):  # float64 on the CPU (the same numbers on every device)
            return torch.randn(*shape, generator=g, dtype=torch.float64) * std

        std = self.score_std**0.5
        if self.layout == "strided":
            leaves = (randn(B, H, L, d, std=std), randn(1, L, H, d, std=std), randn(B, L, H, 2 * dv))

            def views(q, k, v):
                return q.transpose(1, 2), k.expand(B, L, H, d), v[..., ::2]
        else:
            leaves = (randn(B, L, H, d, std=std), randn(B, L, H, d, std=std), randn(B, L, H, dv))

            def views(q, k, v):
                return q, k, v
        g_out, g_lse = randn(B, L, H, dv), randn(B, L, H)
        mask = padding_mask(self.padding, B, L, self.window, g)
        dtype = getattr(torch, self.dtype)
        leaves = [x.to(device, dtype) for x in leaves]
        return leaves, views, g_out.to(device), g_lse.to(device), None if mask is None else mask.to(device)


def padding_mask(kind, batch, seq_len, window, g):
    """A key padding mask of the given kind (see :class:`Case`): bool [B, L] or None."""
    if kind == "none":
        return None
    if kind == "tail":  # each row's real tokens first; a length of 0 pads the whole row
        return torch.arange(seq_len) >= torch.randint(0, seq_len + 1, (batch, 1), generator=g)
    mask = torch.rand(batch, seq_len, generator=g) < 0.3
    if kind == "blind_queries":
        start = seq_len // 3
        mask[:, start : start + window[0] + window[1] + 1] = True
    if kind == "padded_batch_row":
        mask[-1] = True
    return mask


def sees_a_key(seq_len, window, mask, device=None) -> torch.Tensor:
    """bool [B, L, 1] (B = 1 without a mask): the query may attend at least one key."""
    return allowed_keys(seq_len, window, [1], mask, device).any(dim=-1).transpose(1, 2)


def dense_lse(q, k, window, mask, scale):
    """log sum over allowed keys of exp(scale q . k): [B, L, H], -inf for a query with no key.

    Such a query gets every key inside the logsumexp and -inf after, so that its gradient is 0
    rather than NaN (as in dense_attention).
    """
    L = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L x L
    ok = allowed_keys(L, window, [1], mask, q.device)
    sees = ok.any(dim=-1, keepdim=True)
    lse = scores.masked_fill(~(ok | ~sees), float("-inf")).logsumexp(dim=-1)  # B x H x L
    return torch.where(sees[..., 0], lse, float("-inf")).transpose(1, 2)


def sdpa_attention(q, k, v, window, mask, scale):
    """PyTorch's SDPA with the window as a boolean mask: [B, L, H, d_v]. A query with no key is
    given every key (so that nothing is NaN): leave its rows out of comparisons and gradients."""
    ok = allowed_keys(q.shape[1], window, [1], mask, q.device)  # B x 1 x L x L
    ok = ok | ~ok.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), attn_mask=ok, scale=scale)
    return out.transpose(1, 2)


def product_rounding_bounds(q, k, v, g_out, window, mask, scale):
    """What rounding P and dS to the input dtype before their products adds to dQ, dK, dV, to
    first order and in units of the unit roundoff u (float64 in, float64 out, the shapes of q, k, v):
    |dQ error| <= u scale |dS| |K|,  |dK error| <= u scale |dS|^T |Q|,  |dV error| <= u |P|^T |dO|,
    with P the probabilities and dS = P (dP - rowsum(dO O)) the score gradient (no lse gradient).
    """
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L x L
    ok = allowed_keys(q.shape[1], window, [1], mask, q.device)
    sees = ok.any(dim=-1, keepdim=True)
    p = torch.where(sees, scores.masked_fill(~(ok | ~sees), float("-inf")).softmax(dim=-1), 0.0)
    out = torch.einsum("bhij,bjhd->bihd", p, v)
    dp = torch.einsum("bihd,bjhd->bhij", g_out, v)
    ds = p * (dp - (g_out * out).sum(dim=-1).transpose(1, 2)[..., None])
    return (
        scale * torch.einsum("bhij,bjhd->bihd", ds.abs(), k.abs()),
        scale * torch.einsum("bhij,bihd->bjhd", ds.abs(), q.abs()),
        torch.einsum("bhij,bihd->bjhd", p, g_out.abs()),
    )


def _run(attention, leaves, views, g_out, g_lse):
    """out, lse (or None) and the gradients in the leaves of sum(out g_out) + sum(finite lse g_lse)."""
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    out, lse = attention(*views(*leaves))
    loss = (out * g_out.to(out.dtype)).sum()
    if lse is not None:
        loss = loss + torch.where(torch.isinf(lse), 0.0, lse * g_lse.to(lse.dtype)).sum()
    grads = torch.autograd.grad(loss, leaves)
    return out.detach(), None if lse is None else lse.detach(), grads


def _ratio(error: float, allowed: float) -> float:
    return error / allowed if allowed > 0 else 0.0 if error == 0 else float("inf")


def _max_error(x, ref, rows=None) -> float:
    """max |x - ref|, over the rows (bool [B, L, 1]) given; 0 for none."""
    diff = (x.double() - ref).abs()
    if rows is not None:
        diff = diff[rows.expand(diff.shape[:3])]
    return diff.max().item() if diff.numel() else 0.0


def check(case: Case, device) -> dict:
    """Run one case on ``device``: {"ok", "errors", "allowed", ...}; see the module docstring."""
    dtype = getattr(torch, case.dtype)
    leaves, views, g_out, g_lse, mask = case.inputs(device)
    L, window = case.seq_len, case.window
    scale = case.head_dim**-0.5 if case.scale is None else case.scale
    sees = sees_a_key(L, window, mask, device)  # B x L x 1
    low = dtype != torch.float64
    if low:  # compared with SDPA: no lse gradient, no gradient into the rows that see no key
        g_out = torch.where(sees[..., None], g_out.to(dtype).double(), 0.0)
        g_lse = torch.zeros_like(g_lse)

    def ours(q, k, v):
        out, lse = triton_kernel.attend(q, k, v, window, mask, scale)
        return out.to(dtype), lse

    def reference(q, k, v):
        return dense_attention(q, k, v, window, key_padding_mask=mask, scale=scale), dense_lse(q, k, window, mask, scale)

    out, lse, grads = _run(ours, leaves, views, g_out, g_lse)
    exact = [x.double() for x in leaves]
    ref_out, ref_lse, ref_grads = _run(reference, exact, views, g_out, g_lse)
    finite_lse = torch.isfinite(lse) | (torch.isneginf(lse) & torch.isneginf(ref_lse))
    result = dict(
        finite=bool(torch.isfinite(out).all() and finite_lse.all() and all(torch.isfinite(g).all() for g in grads)),
        lse_minus_inf_where_no_key=bool(torch.equal(torch.isneginf(lse), ~sees.expand(lse.shape))),
    )
    errors = {"out": _max_error(out, ref_out, None if not low else sees)}
    errors["lse"] = _max_error(lse.nan_to_num(neginf=0.0), ref_lse.nan_to_num(neginf=0.0), sees)
    errors.update({name: _max_error(g, r) for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads)})
    if not low:
        allowed = {"out": 1e-10, "lse": 1e-10}
        allowed.update({name: 1e-10 * max(1.0, r.abs().max().item()) for name, r in zip(("dq", "dk", "dv"), ref_grads)})
    else:
        sdpa_out, _, sdpa_grads = _run(lambda *x: (sdpa_attention(*x, window, mask, scale), None), leaves, views, g_out, g_lse)
        lse32 = dense_lse(*(x.float() for x in views(*leaves)[:2]), window, mask, scale)
        # the bounds for the attention's inputs, carried back through the views to the leaves
        xs = [x.clone().requires_grad_() for x in exact]
        bounds = product_rounding_bounds(*views(*xs), g_out, window, mask, scale)
        bounds = torch.autograd.grad(views(*xs), xs, bounds)
        u = UNIT_ROUNDOFF[dtype]
        allowed = {
            "out": 1.5 * _max_error(sdpa_out, ref_out, sees),
            "lse": 1.5 * _max_error(lse32.nan_to_num(neginf=0.0), ref_lse.nan_to_num(neginf=0.0), sees),
        }
        for name, sdpa_grad, ref, bound in zip(("dq", "dk", "dv"), sdpa_grads, ref_grads, bounds):
            allowed[name] = 1.5 * _max_error(sdpa_grad, ref) + u * (bound.abs().max().item() if bound.numel() else 0.0)
    result.update(errors=errors, allowed=allowed)
    result["worst_ratio"] = max(_ratio(errors[n], allowed[n]) for n in errors)
    result["ok"] = result["finite"] and result["lse_minus_inf_where_no_key"] and result["worst_ratio"] <= 1
    return result


def _shapes_times_dtypes(shapes, dtypes, **fields):
    return [Case(*shape, dtype=dtype, seed=i, **fields) for i, shape in enumerate(shapes) for dtype in dtypes]


DTYPES = ("float64", "float32", "float16", "bfloat16")
# B, L, H, d, d_v, (left, right), padding
GPU_SHAPES = [
    (2, 1000, 3, 64, 64, (128, 128), "tail"),
    (1, 4096, 4, 128, 128, (256, 0), "none"),  # causal
    (2, 777, 2, 20, 5, (300, 17), "blind_queries"),  # head dims that are not powers of two
    (1, 1, 1, 64, 64, (0, 0), "none"),
    (3, 300, 2, 64, 32, (299, 299), "padded_batch_row"),  # every key in every window
    (1, 2048, 2, 64, 64, (0, 0), "random"),
    (1, 513, 2, 256, 256, (40, 100), "random"),  # the widest head dim of common models
]
GPU_CASES = (
    _shapes_times_dtypes(GPU_SHAPES, DTYPES)
    + _shapes_times_dtypes([(2, 600, 3, 64, 64, (50, 70), "tail")], DTYPES, layout="strided")
    + _shapes_times_dtypes([(1, 1024, 2, 64, 64, (128, 128), "none")], ("float16", "bfloat16"), score_std=16.0)
)
TINY_CASES = [
    Case(1, 37, 2, 16, 16, (5, 9), "blind_queries", dtype="bfloat16"),
    Case(2, 20, 1, 20, 5, (19, 0), "tail", dtype="float64", layout="strided"),
    Case(2, 33, 1, 16, 16, (3, 30), "padded_batch_row", dtype="float16", score_std=16.0),
]


def provenance(device: torch.device) -> dict:
    """Where the check ran: device, versions, commit, date."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    import triton  # the backend has imported it already

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return dict(
        device=name,
        interpreted=triton_kernel._kernels().INTERPRETED,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=triton.__version__,
        commit=commit,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="three small cases (for Triton's interpreter)")
    parser.add_argument("--out", default="triton-check.json", help="the JSON file written")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = []
    for case in TINY_CASES if args.tiny else GPU_CASES:
        started = time.perf_counter()
        try:
            result = check(case, device)
        except Exception as error:  # a compile or launch failure is a result too
            result = dict(ok=False, error=f"{type(error).__name__}: {error}")
        result = dict(case=asdict(case), seconds=round(time.perf_counter() - started, 3), **result)
        results.append(result)
        print(
            f"{'ok  ' if result['ok'] else 'FAIL'} {case.dtype:8s} B={case.batch} L={case.seq_len} H={case.heads} "
            f"d={case.head_dim}/{case.value_dim} window={case.window} {case.padding} {case.layout}: "
            + (f"largest error / allowed {result['worst_ratio']:.2f}" if "error" not in result else result["error"]),
            flush=True,
        )
    doc = dict(provenance=provenance(device), ok=all(r["ok"] for r in results), cases=results)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{sum(r['ok'] for r in results)} of {len(results)} cases ok; wrote {args.out}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
