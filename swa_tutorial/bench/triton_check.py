"""Correctness of the Triton kernel (backend "triton") on a device, against float64 dense attention.

    python -m swa_tutorial.bench.triton_check                  # CUDA: every case, triton-check.json
    TRITON_INTERPRET=1 python -m swa_tutorial.bench.triton_check --device cpu --tiny

Each :class:`Case` (shape, grouped heads, window, padding, softcap, dtype, input layout) runs the
kernel's out and lse and the gradients of sum(out * g_out) + sum(lse * g_lse) in q, k and v, and
compares them with float64 dense attention (:func:`dense_reference`) on the same (rounded)
inputs, on the same device:

* float64: out and lse within 1e-10, gradients within 1e-10 times their largest entry;
* float32, float16, bfloat16 (g_lse = 0: SDPA returns no lse): out, rounded to the input dtype as
  the entry point returns it, within 1.5 times the error of PyTorch's SDPA on the same inputs;
  lse within 1.5 times the error of a float32 logsumexp, or within u32 (|lse| + n + 2) when that
  is larger (u32 = 2^-24, n the most keys a row sees: the worst-case rounding of a float32
  log-sum-exp over n scores, since single ulps make 1.5 times one rounding a noisy yardstick);
  each gradient within 1.5 times SDPA's
  error plus u times :func:`product_rounding_bounds` (u the dtype's unit roundoff), the first-order
  effect of rounding P and dS to the input dtype before their products, as FlashAttention does,
  plus u32 times one rounding of the float32 dot products dP and D carried into dS (the second
  part of :func:`product_rounding_bounds`; where the exact dS is 0 SDPA's error may be 0 too).
  SDPA cannot cap scores: with a softcap the yardstick is float32 dense attention, its out and
  gradients rounded to the dtype, plus the most that SDPA's own rounding of P and dS could have
  added to its error (u times the bounds, out's u |P| |V|): the allowances above with SDPA's
  error replaced by that sum.

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
    """One problem: q [B, L, H, d], k [B, L, H_kv, d], v [B, L, H_kv, d_v], a (left, right) window,
    a padding kind and a softcap.

    ``padding``: one of PADDINGS ("blind_queries": a run of padding as wide as the window, so that
    the queries in its middle see no key; "padded_batch_row": the last batch row all padding).
    ``layout``: "contiguous", or "strided" (q a transposed [B, H, L, d], k expanded over the batch
    with stride 0, v every other column of a wider tensor). ``score_std``: the standard deviation
    of q . k / sqrt(d). ``scale``: None for 1 / sqrt(d). ``kv_heads``: H_kv, None for H (H a
    multiple of it). ``softcap``: 0 for none.
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
    kv_heads: int | None = None
    softcap: float = 0.0

    def inputs(self, device):
        """(q, k, v) as leaf tensors, the function making the attention's inputs from them, the
        upstream gradients g_out [B, L, H, d_v] and g_lse [B, L, H], and the padding mask."""
        B, L, H, d, dv = self.batch, self.seq_len, self.heads, self.head_dim, self.value_dim
        H_kv = self.kv_heads or H
        g = torch.Generator().manual_seed(self.seed)

        def randn(*shape, std=1.0):  # float64 on the CPU (the same numbers on every device)
            return torch.randn(*shape, generator=g, dtype=torch.float64) * std

        std = self.score_std**0.5
        if self.layout == "strided":
            leaves = (randn(B, H, L, d, std=std), randn(1, L, H_kv, d, std=std), randn(B, L, H_kv, 2 * dv))

            def views(q, k, v):
                return q.transpose(1, 2), k.expand(B, L, H_kv, d), v[..., ::2]
        else:
            leaves = (randn(B, L, H, d, std=std), randn(B, L, H_kv, d, std=std), randn(B, L, H_kv, dv))

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


def repeated_heads(q, *kv):
    """k, v [B, L, H_kv, n] repeated to q's H heads: head h is key/value head h // (H / H_kv)."""
    return [x.repeat_interleave(q.shape[2] // x.shape[2], dim=2) for x in kv]


def _capped_scores(q, k, window, mask, scale, softcap):
    """The scores [B, H, L, L] from the definition (scale q . k, then softcap tanh(s / softcap) when
    softcap > 0), -inf outside the window and on padding, except in the rows of a query with no
    key, which keep every score (so that nothing below is NaN); and bool [B, 1, L, 1], whether
    the query sees a key."""
    (k,) = repeated_heads(q, k)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale  # B x H x L x L
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    ok = allowed_keys(q.shape[1], window, [1], mask, q.device)
    sees = ok.any(dim=-1, keepdim=True)
    return scores.masked_fill(~(ok | ~sees), float("-inf")), sees


def dense_reference(q, k, v, window, mask, scale, softcap=0.0):
    """out [B, L, H, d_v] and lse [B, L, H] of dense attention, in q's dtype; k, v with H_kv heads.

    Without a softcap out is :func:`swa_tutorial.reference.dense_attention`'s on k and v repeated
    to H heads; with one, the same written here from the definition (capped scores). A query
    with no key has out 0 and lse -inf, and gradient 0 rather than NaN (as in dense_attention).
    """
    scores, sees = _capped_scores(q, k, window, mask, scale, softcap)
    lse = torch.where(sees[..., 0], scores.logsumexp(dim=-1), float("-inf")).transpose(1, 2)  # B x L x H
    (v_heads,) = repeated_heads(q, v)
    if softcap:
        p = torch.where(sees, scores.softmax(dim=-1), 0.0)
        return torch.einsum("bhij,bjhd->bihd", p, v_heads), lse
    return dense_attention(q, *repeated_heads(q, k), v_heads, window, key_padding_mask=mask, scale=scale), lse


def sdpa_attention(q, k, v, window, mask, scale):
    """PyTorch's SDPA with the window as a boolean mask (k, v repeated to q's heads): [B, L, H, d_v].
    A query with no key is given every key (so that nothing is NaN): leave its rows out of
    comparisons and gradients."""
    ok = allowed_keys(q.shape[1], window, [1], mask, q.device)  # B x 1 x L x L
    ok = ok | ~ok.any(dim=-1, keepdim=True)
    qkv = (x.transpose(1, 2) for x in (q, *repeated_heads(q, k, v)))
    return F.scaled_dot_product_attention(*qkv, attn_mask=ok, scale=scale).transpose(1, 2)


def product_rounding_bounds(q, k, v, g_out, window, mask, scale, softcap=0.0):
    """What rounding P and dS to the input dtype before their products adds to out, dQ, dK, dV,
    to first order and in units of the unit roundoff u (float64 in, float64 out, the shapes of
    out, q, k, v): |out error| <= u |P| |V|, |dQ error| <= u scale |dS| |K|,
    |dK error| <= u scale |dS|^T |Q|, |dV error| <= u |P|^T |dO|, with P the probabilities and
    dS = P (dP - rowsum(dO O)) (times the cap's slope 1 - tanh^2) the score gradient (no lse
    gradient). dK and dV sum over the query heads that read a key/value head.

    Then, in units of float32's u32, what the float32 dot products dP_ij = dO_i . v_j and
    D_i = dO_i . O_i add to dQ and dK, whose errors need not cancel where the exact dS does (a
    query with one key has dS = 0, and SDPA's error there may be 0): one rounding of each dot
    product's sum of magnitudes, |dS error| ~ P (|dO| |V|^T + |dO| . |O|), carried into dQ and dK
    as |dS| is (the worst case, d_v times that, would swamp every other term); the shapes of q,
    k, v (0 for v).
    """
    scores, sees = _capped_scores(q, k, window, mask, scale, softcap)
    k_heads, v_heads = repeated_heads(q, k, v)
    p = torch.where(sees, scores.softmax(dim=-1), 0.0)
    out = torch.einsum("bhij,bjhd->bihd", p, v_heads)
    dp = torch.einsum("bihd,bjhd->bhij", g_out, v_heads)
    ds = p * (dp - (g_out * out).sum(dim=-1).transpose(1, 2)[..., None])
    dot_terms = torch.einsum("bihd,bjhd->bhij", g_out.abs(), v_heads.abs()) + (g_out * out).abs().sum(dim=-1).transpose(1, 2)[..., None]
    ds_dots = p * dot_terms
    if softcap:
        slope = 1 - (scores.nan_to_num(neginf=0.0) / softcap) ** 2
        ds, ds_dots = ds * slope, ds_dots * slope

    def per_kv_head(x):  # [B, L, H, n] -> [B, L, H_kv, n], the sum over each group of query heads
        return x.unflatten(2, (k.shape[2], -1)).sum(dim=3)

    def dq_dk(ds):  # |dS| carried into dQ and dK
        return (scale * torch.einsum("bhij,bjhd->bihd", ds.abs(), k_heads.abs()),
                per_kv_head(scale * torch.einsum("bhij,bihd->bjhd", ds.abs(), q.abs())))

    rounding = (torch.einsum("bhij,bjhd->bihd", p, v_heads.abs()), *dq_dk(ds),
                per_kv_head(torch.einsum("bhij,bihd->bjhd", p, g_out.abs())))
    return rounding, (*dq_dk(ds_dots), torch.zeros_like(v))


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


def _largest(x) -> float:
    """max |x|, 0 for an empty x."""
    return x.abs().max().item() if x.numel() else 0.0


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
        out, lse = triton_kernel.attend(q, k, v, window, mask, scale, case.softcap)
        return out.to(dtype), lse

    def reference(q, k, v):
        return dense_reference(q, k, v, window, mask, scale, case.softcap)

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
        if case.softcap:  # float32 dense attention, rounded to the dtype
            yard_out, _, yard_grads = _run(
                lambda *x: (dense_reference(*x, window, mask, scale, case.softcap)[0].to(dtype), None),
                [x.float() for x in leaves], views, g_out, g_lse,
            )
            yard_grads = [g.to(dtype) for g in yard_grads]
        else:
            yard_out, _, yard_grads = _run(lambda *x: (sdpa_attention(*x, window, mask, scale), None), leaves, views, g_out, g_lse)
        lse32 = dense_reference(*(x.float() for x in views(*leaves)), window, mask, scale, case.softcap)[1]
        # the bounds for the attention's inputs, the gradients' carried back through the views to the leaves
        xs = [x.clone().requires_grad_() for x in exact]
        (out_bound, *bounds), dots = product_rounding_bounds(*views(*xs), g_out, window, mask, scale, case.softcap)
        bounds = torch.autograd.grad(views(*xs), xs, bounds, retain_graph=True)
        dots = torch.autograd.grad(views(*xs), xs, dots)
        u, u32 = UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[torch.float32]
        most_keys = allowed_keys(L, window, [1], mask, device).sum(dim=-1).max().item()
        # SDPA's error holds its own rounding of P and dS; float32 attention's gets it added
        own = [u * _largest(b) if case.softcap else 0.0 for b in (out_bound, *bounds)]
        allowed = {
            "out": 1.5 * (_max_error(yard_out, ref_out, sees) + own[0]),
            "lse": max(
                1.5 * _max_error(lse32.nan_to_num(neginf=0.0), ref_lse.nan_to_num(neginf=0.0), sees),
                u32 * (_largest(ref_lse[torch.isfinite(ref_lse)]) + most_keys + 2),
            ),
        }
        for name, yard_grad, ref, bound, extra, dot in zip(("dq", "dk", "dv"), yard_grads, ref_grads, bounds, own[1:], dots):
            allowed[name] = 1.5 * (_max_error(yard_grad, ref) + extra) + u * _largest(bound) + u32 * _largest(dot)
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
    # grouped heads and softcap first: Mistral's H / H_kv = 4 with a causal window, multi-query
    # with Gemma 2's cap of 50 (scores up to about 100 before it), both together
    _shapes_times_dtypes([(1, 4096, 8, 128, 128, (1023, 0), "tail")], DTYPES, kv_heads=2)
    + _shapes_times_dtypes([(2, 1000, 4, 64, 64, (128, 128), "random")], DTYPES, kv_heads=1, softcap=50.0, score_std=100.0)
    + _shapes_times_dtypes([(1, 777, 6, 32, 32, (300, 17), "blind_queries")], DTYPES, kv_heads=2, softcap=5.0, score_std=16.0)
    + _shapes_times_dtypes(GPU_SHAPES, DTYPES)
    + _shapes_times_dtypes([(2, 600, 3, 64, 64, (50, 70), "tail")], DTYPES, layout="strided")
    + _shapes_times_dtypes([(1, 1024, 2, 64, 64, (128, 128), "none")], ("float16", "bfloat16"), score_std=16.0)
)
TINY_CASES = [
    Case(1, 37, 2, 16, 16, (5, 9), "blind_queries", dtype="bfloat16"),
    Case(1, 24, 2, 16, 16, (5, 0), "tail", dtype="float32", kv_heads=1, softcap=5.0, score_std=16.0),
    Case(2, 20, 1, 20, 5, (19, 0), "tail", dtype="float64", layout="strided"),
    Case(2, 33, 1, 16, 16, (3, 30), "padded_batch_row", dtype="float16", score_std=16.0),
]


def provenance(device: torch.device, commit: str | None = None) -> dict:
    """Where the check ran: device, versions, commit (``git rev-parse HEAD`` if not given), date."""
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    import triton  # the backend has imported it already

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return dict(
        device=name,
        interpreted=triton_kernel.load_kernels().INTERPRETED,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        triton=triton.__version__,
        commit=commit,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def failed_in(cases, paths) -> list:
    """The cases of ``cases`` that failed (``ok`` false) in any of the result files ``paths``,
    matched by their fields, in the order of ``cases``."""
    failed = set()
    for path in paths:
        with open(path) as f:
            failed |= {json.dumps(r["case"], sort_keys=True) for r in json.load(f)["cases"] if not r["ok"]}
    return [case for case in cases if json.dumps(asdict(case), sort_keys=True) in failed]


def run_cases(cases, check_case, argv, prog: str, description: str) -> int:
    """The command line of a device check: run ``check_case(case, device)`` for each case (the
    tiny ones with --tiny), print a line each, write every result and the provenance as JSON."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a few small cases (for Triton's interpreter)")
    parser.add_argument("--out", default=prog.split(".")[-1].replace("_", "-") + ".json", help="the JSON file written")
    parser.add_argument("--max-seconds", type=float, default=float("inf"), help="start no case after this long")
    parser.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--failed-in", nargs="+", default=(), metavar="FILE",
                        help="run only the cases that failed in these earlier result files")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    chosen = cases[1] if args.tiny else cases[0]
    if args.failed_in:
        chosen = failed_in(chosen, args.failed_in)
    results = []
    run_started = time.perf_counter()
    for case in chosen:
        if time.perf_counter() - run_started > args.max_seconds:
            print(f"stopped after {args.max_seconds} s: {len(results)} cases run")
            break
        started = time.perf_counter()
        try:
            result = check_case(case, device)
        except Exception as error:  # a compile or launch failure is a result too
            result = dict(ok=False, error=f"{type(error).__name__}: {error}"[:2000])
        result = dict(case=asdict(case), seconds=round(time.perf_counter() - started, 3), **result)
        results.append(result)
        outcome = f"largest error / allowed {result['worst_ratio']:.2f}" if "error" not in result else result["error"]
        print(f"{'ok  ' if result['ok'] else 'FAIL'} {case}: {outcome}", flush=True)
    doc = dict(provenance=provenance(device, args.commit), ok=all(r["ok"] for r in results), cases=results)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{sum(r['ok'] for r in results)} of {len(results)} cases ok; wrote {args.out}")
    return 0 if doc["ok"] else 1


def main(argv=None) -> int:
    return run_cases((GPU_CASES, TINY_CASES), check, argv, "python -m swa_tutorial.bench.triton_check", __doc__.split("\n\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
