"""Correctness against float64 dense attention: the check before every timing, and a device check.

:func:`check` precedes every timing: it compares one result with float64 dense attention on query
slices. :func:`check_device` (``python -m swa_tutorial.bench.correctness --device cuda``) runs
sliding_window_attention on a device (a GPU) on random inputs with padding masks (including
windows of only padding), float32, float16 and bfloat16, forward and backward, against float64
dense attention on the CPU, timing nothing.

The slices of :func:`check`:

A float64 dense reference of the whole problem needs 8 B H L^2 bytes (25 GB at L = 16384 with
12 heads), so it is computed on slices instead, which is exact: query i sees only keys
i - w .. i + w, so the outputs of queries a .. b - 1 depend only on tokens a - w .. b + w - 1,
and dense attention on that sub-sequence gives exactly those outputs. Their gradients reach one
window further: the gradient of key j collects from queries j - w .. j + w, whose windows reach
j - 2w .. j + 2w, so the gradients of tokens a .. b - 1 come exactly from the sub-sequence
a - 2w .. b + 2w - 1 (with the same output gradient on it). The slices sit at the start, the
middle and the end of the sequence: the two ends are where the band's invalid corners are.

Full attention (``window=None``: every query sees every key, what SDPA computes without a mask)
has no such sub-sequence: its reference takes the queries of each slice against all L keys, and
for the gradients every query, in blocks (each key's gradient collects from every query).
"""

from __future__ import annotations

import argparse

import torch

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.bench.measure import resolve_device
from swa_tutorial.reference import dense_attention

# Largest error allowed, relative to the largest reference value: float64 is exact up to rounding,
# the others are bounded by their rounding (float32 about 1e-7, float16 1e-3, bfloat16 8e-3).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
FULL_BLOCK = 256  # queries per block of the full-attention reference (B H 256 L numbers at a time)


def query_slices(seq_len: int, window: int) -> list[tuple[int, int]]:
    """The query ranges [a, b) that are checked: 2w queries (or all) at the start, middle and end."""
    n = min(seq_len, 2 * window)
    starts = sorted({0, (seq_len - n) // 2, seq_len - n})
    return [(a, a + n) for a in starts]


def _reference(q, k, v, g, window, a, b, reach):
    """Float64 dense attention on tokens a - reach .. b + reach - 1: outputs and, if g, gradients
    for the queries a .. b - 1."""
    lo, hi = max(0, a - reach), min(q.shape[1], b + reach)
    sub = [x[:, lo:hi].detach().double().requires_grad_(g is not None) for x in (q, k, v)]
    out = dense_attention(*sub, window)
    rows = slice(a - lo, b - lo)
    if g is None:
        return [out[:, rows].detach()]
    out.backward(g[:, lo:hi].double())
    return [out[:, rows].detach()] + [x.grad[:, rows] for x in sub]


def _full_reference(q, k, v, g, slices):
    """Float64 full attention (no window) on the checked slices: per slice [out], or with g
    [out, q.grad, k.grad, v.grad]."""
    scale = q.shape[-1] ** -0.5
    k64, v64 = (x.detach().double().requires_grad_(g is not None) for x in (k, v))

    def rows(a, b):  # the outputs (and with g the q gradients) of queries a .. b - 1
        qb = q[:, a:b].detach().double().requires_grad_(g is not None)
        probs = (torch.einsum("bihd,bjhd->bhij", qb, k64) * scale).softmax(dim=-1)  # B x H x n x L
        out = torch.einsum("bhij,bjhd->bihd", probs, v64)
        if g is None:
            return [out.detach()]
        out.backward(g[:, a:b].double())  # adds this block's share to k64.grad and v64.grad
        return [out.detach(), qb.grad]

    if g is None:
        return [rows(a, b) for a, b in slices]
    L = q.shape[1]
    out, q_grad = (torch.cat(parts, dim=1) for parts in zip(*(rows(a, a + FULL_BLOCK) for a in range(0, L, FULL_BLOCK))))
    return [[out[:, a:b], q_grad[:, a:b], k64.grad[:, a:b], v64.grad[:, a:b]] for a, b in slices]


def check(out, q, k, v, window, grad_out=None) -> dict:
    """Compare ``out`` [B, L, H, d] (and, with ``grad_out``, q.grad, k.grad, v.grad) with float64.

    ``window``: the one-sided window w, or None for full attention (every query sees every key).
    Returns {"max_rel_err", "tolerance", "ok", "slices"}: the largest |result - reference| over
    the checked slices divided by the largest |reference| value of its tensor.
    """
    L = q.shape[1]
    worst = 0.0
    if window is None:
        slices = query_slices(L, FULL_BLOCK // 2)
        all_refs = _full_reference(q, k, v, grad_out, slices)
    else:
        slices = query_slices(L, window)
        reach = window if grad_out is None else 2 * window
        all_refs = [_reference(q, k, v, grad_out, window, a, b, reach) for a, b in slices]
    for (a, b), refs in zip(slices, all_refs):
        got = [out] if grad_out is None else [out, q.grad, k.grad, v.grad]
        for x, ref in zip(got, refs):
            err = ((x[:, a:b].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
            worst = max(worst, err if err == err else float("inf"))  # NaN counts as a failure
    tol = TOLERANCE[q.dtype]
    return {"max_rel_err": worst, "tolerance": tol, "ok": worst <= tol, "slices": slices}


# The tolerances of the check before every timing, for the dtypes a GPU runs.
DEVICE_TOLERANCES = {dtype: TOLERANCE[dtype] for dtype in (torch.float32, torch.float16, torch.bfloat16)}
DEVICE_SHAPES = [(2, 1000, 4, 64, 64), (1, 37, 3, 16, 5), (3, 513, 2, 32, 256), (1, 9, 1, 8, 40)]  # B, L, H, d, w


def check_device(device: str, seed: int = 0) -> dict[str, float]:
    """Run every shape and dtype on ``device``; return the worst relative error per dtype."""
    torch.manual_seed(seed)
    worst = {}
    for dtype, tol in DEVICE_TOLERANCES.items():
        for B, L, H, d, w in DEVICE_SHAPES:
            q, k, v = (torch.randn(B, L, H, d, dtype=torch.float64) for _ in range(3))
            pad = torch.rand(B, L) < 0.2
            pad[0, : min(L, 3 * w)] = True  # the first queries see only padding: zero output
            ref = dense_attention(q, k, v, w, key_padding_mask=pad)
            qd, kd, vd = (x.to(device, dtype).requires_grad_() for x in (q, k, v))
            out = sliding_window_attention(qd, kd, vd, w, key_padding_mask=pad.to(device))
            out.float().square().sum().backward()
            if not (torch.isfinite(out).all() and all(torch.isfinite(x.grad).all() for x in (qd, kd, vd))):
                raise AssertionError(f"non-finite output or gradient: {dtype}, shape {(B, L, H, d)}, w={w}")
            err = ((out.double().cpu() - ref).abs().max() / v.abs().max()).item()
            if err >= tol:
                raise AssertionError(f"{dtype}, shape {(B, L, H, d)}, w={w}: error {err:.3g} >= {tol}")
            worst[str(dtype)] = max(worst.get(str(dtype), 0.0), err)
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m swa_tutorial.bench.correctness",
        description="Check sliding_window_attention on a device (a GPU) against float64 dense attention "
        "computed on the CPU: random inputs with key padding (some queries see only padding), "
        "float32, float16 and bfloat16, outputs and gradients. Prints the worst error per dtype, "
        "or stops at the first configuration beyond its tolerance. Nothing is timed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--device", default="cuda", help="the device to check: cuda, cuda:1, ... (cpu runs the same check)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.exit(1, f"{parser.prog}: {error}\n")
    print(f"{device} check passed; max error / max|v| per dtype:", check_device(str(device), args.seed))


if __name__ == "__main__":
    main()
