"""Correctness of ``sliding_window_attention`` on a device against float64 dense attention on the CPU.

    python -m swa_tutorial.bench.device_check --device cuda

Random inputs with padding masks (including windows of only padding), float32, float16 and
bfloat16, forward and backward; the error is measured as max |out - reference| / max |v|.
"""

from __future__ import annotations

import argparse

import torch

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.bench.check import TOLERANCE
from swa_tutorial.bench.measure import resolve_device
from swa_tutorial.reference import dense_attention

# The tolerances of the check before every timing, for the dtypes a GPU runs.
TOLERANCES = {dtype: TOLERANCE[dtype] for dtype in (torch.float32, torch.float16, torch.bfloat16)}
SHAPES = [(2, 1000, 4, 64, 64), (1, 37, 3, 16, 5), (3, 513, 2, 32, 256), (1, 9, 1, 8, 40)]  # B, L, H, d, w


def check(device: str, seed: int = 0) -> dict[str, float]:
    """Run every shape and dtype on ``device``; return the worst relative error per dtype."""
    torch.manual_seed(seed)
    worst = {}
    for dtype, tol in TOLERANCES.items():
        for B, L, H, d, w in SHAPES:
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
        prog="python -m swa_tutorial.bench.device_check",
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
    print(f"{device} check passed; max error / max|v| per dtype:", check(str(device), args.seed))


if __name__ == "__main__":
    main()
