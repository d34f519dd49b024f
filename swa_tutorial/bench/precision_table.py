"""The half-precision error table: each backend against PyTorch's SDPA on the same inputs.

    python -m swa_tutorial.bench.precision_table            # the table of issue 8's shapes
    python -m swa_tutorial.bench.precision_table -L 512 -w 64 --spreads 1 8 32

For each dtype (float16, bfloat16) and spread s of the scores (q scaled so that the scores
q . k / sqrt(d) have standard deviation s), with and without key padding: the inputs are drawn in
float64 and rounded to the dtype once; the reference is float64 dense attention on those rounded
inputs, so only the rounding inside each computation is measured. The error is the largest
absolute difference over the queries that see a key (SDPA returns NaN for the others).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.backends import BACKENDS
from swa_tutorial.core.windows import window_mask
from swa_tutorial.reference import dense_attention


def errors(dtype, spread, padding, *, backends=("chunks", "dense"), B=2, L=128, H=2, d=64, window=16, seed=0):
    """Max error against float64 of each backend and of SDPA: {name: error}."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(B, L, generator=g) < 0.3 if padding else None
    q, k, v = ((x * s).to(dtype) for x, s in ((q, spread), (k, 1.0), (v, 1.0)))
    ref = dense_attention(q.double(), k.double(), v.double(), window, key_padding_mask=mask)
    allowed = window_mask(L, window)[None, None]  # 1 x 1 x L x L
    if mask is not None:
        allowed = allowed & ~mask[:, None, None, :]
    sees = allowed.any(-1).transpose(1, 2)[..., None]  # B x L x 1 x 1

    def error(out):
        return ((out.double() - ref).abs() * sees).nan_to_num(0.0).max().item()

    heads_first = [x.transpose(1, 2) for x in (q, k, v)]
    result = {"sdpa": error(F.scaled_dot_product_attention(*heads_first, attn_mask=allowed).transpose(1, 2))}
    for name in backends:
        result[name] = error(sliding_window_attention(q, k, v, window, key_padding_mask=mask, backend=name))
    return result


def table(spreads=(1.0, 4.0, 16.0), **shape) -> str:
    """The error table as text: one row per (dtype, spread, padding), each backend / SDPA."""
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for spread in spreads:
            for padding in (False, True):
                e = errors(dtype, spread, padding, **shape)
                cells = "  ".join(f"{name} {e[name]:.2e} ({e[name] / e['sdpa']:.2f}x)" for name in e if name != "sdpa")
                rows.append(f"{str(dtype)[6:]:9} s={spread:<4g} pad={'yes' if padding else 'no ':3}  sdpa {e['sdpa']:.2e}  {cells}")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m swa_tutorial.bench.precision_table",
        description="Half-precision max error against float64: every backend beside PyTorch's SDPA.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("-B", type=int, default=2)
    p.add_argument("-L", type=int, default=128)
    p.add_argument("-H", type=int, default=2)
    p.add_argument("-d", type=int, default=64)
    p.add_argument("--window", "-w", type=int, default=16)
    p.add_argument("--spreads", type=float, nargs="+", default=[1.0, 4.0, 16.0], help="std of the scores")
    p.add_argument("--backends", nargs="+", default=["chunks", "dense"], choices=sorted(BACKENDS))
    args = p.parse_args(argv)
    print(table(args.spreads, backends=args.backends, B=args.B, L=args.L, H=args.H, d=args.d, window=args.window))


if __name__ == "__main__":
    main()
