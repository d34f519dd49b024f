"""The Triton kernel's tile sizes, warps and pipeline stages, timed side by side on one GPU.

    python -m swa_tutorial.bench.kernel_tuning --out DIR          # CUDA: bfloat16, L = 16K
    TRITON_INTERPRET=1 python -m swa_tutorial.bench.kernel_tuning --device cpu --tiny --out DIR

The kernel's launch settings, (BLOCK_M, BLOCK_N, num_warps, num_stages) for its three kernels,
come from :func:`~swa_tutorial.backends.triton.launcher.launch_config`, a rule written before any
GPU had run it. This command times a small set of settings (CONFIGS, the kind FlashAttention-2 and
Triton's attention tutorial use on Hopper) for the shapes of :mod:`~swa_tutorial.bench.kernel_timing`
(the book's, B = 1, H = 12, d = 64, window (256, 256); Mistral's, H = 32, H_kv = 8, d = 128,
window (4095, 0)), forward and forward + backward, beside FlexAttention (compiled, its block mask
built before the timing) for the goal of the GPU issue. For every setting, first its output and
gradients are compared with those of the rule's setting on the same bfloat16 inputs (the
largest difference relative to the largest value: tiles of another size only round
differently), then it is timed with CUDA events (median, IQR, every time). A setting that does
not compile or does not fit the GPU's shared memory is a result too. The ratios compare each
setting with the rule's and with FlexAttention, from the same run
(:func:`~swa_tutorial.bench.measure.compare`); ``best`` names the fastest setting whose check
passed. One JSON file per shape, kernel-tuning-SHAPE.json, written after every configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from swa_tutorial.backends.triton import launcher
from swa_tutorial.bench.kernel_timing import (
    MODES,
    SHAPES,
    TINY_SHAPES,
    Implementations,
    driver_version,
    failure,
    timings,
    triton_attention,
    useful_flops,
)
from swa_tutorial.bench.measure import compare, resolve_device
from swa_tutorial.bench.sweeps import provenance

# (BLOCK_M, BLOCK_N, num_warps, num_stages); None: the rule's own (launch_config).
CONFIGS = (None, (64, 64, 4, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 128, 4, 2),
           (128, 128, 8, 2), (64, 32, 4, 2), (32, 64, 4, 2))
TINY_CONFIGS = (None, (32, 16, 1, 1), (16, 32, 1, 1))
LENGTHS = (16384,)
TINY_LENGTHS = (40,)
# The largest difference from the rule's setting, relative to the largest value, that passes:
# four units in the last place of bfloat16 at that value (2^-7 each). Tiles of another size
# round P and dS to bfloat16 before their products at other places, and sum in another order.
CHECK_TOLERANCE = 4 * 2.0**-7


def label(blocks) -> str:
    """'rule' or 'BLOCK_M x BLOCK_N, w warps, s stages'."""
    return "rule" if blocks is None else "{} x {}, {} warps, {} stages".format(*blocks)


def outputs(attention, q, k, v, grad):
    """out and the gradients of q, k, v, in float32."""
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = attention(*leaves)
    return [x.float() for x in (out.detach(), *torch.autograd.grad(out, leaves, grad))]


def difference(got, expected) -> float:
    """The largest |got - expected| over out, dq, dk, dv, each relative to its largest |expected|."""
    return max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(got, expected))


def run_shape(shape_name, shape, lengths, configs, device, budget_s, with_flex, doc, path):
    """Every length, setting and mode of one shape, into doc["results"], written to ``path``."""
    B, H, H_kv, d, window = shape
    for L in lengths:
        g = torch.Generator(device=device).manual_seed(L)
        q, k, v = (torch.randn(B, L, h, d, generator=g, device=device, dtype=torch.bfloat16) for h in (H, H_kv, H_kv))
        grad = torch.randn(B, L, H, d, generator=g, device=device, dtype=torch.bfloat16)
        expected = outputs(triton_attention(window), q, k, v, grad)
        flex = Implementations(L, H, H_kv, window, device, compiled=device.type == "cuda") if with_flex else None
        checks = {}  # label: the check's result, made once per setting and length
        for mode in MODES:
            flops = useful_flops(B, H, L, window, d, mode == "fwd+bwd")
            row = {"shape": shape_name, "seq_len": L, "mode": mode, "useful_flops": flops, "configs": []}
            if flex is not None:
                try:
                    row["flex"] = timings(flex.flex_attention, q, k, v, grad, mode, device, budget_s)
                except Exception as error:  # FlexAttention has no backward on a CPU, for one
                    row["flex"] = failure(error)
            for blocks in configs:
                result = {"blocks": blocks, "label": label(blocks)}
                try:
                    attention = triton_attention(window, blocks)
                    if result["label"] not in checks:
                        checks[result["label"]] = difference(outputs(attention, q, k, v, grad), expected)
                    result["max_relative_difference"] = checks[result["label"]]
                    result["ok"] = result["max_relative_difference"] <= CHECK_TOLERANCE
                    result.update(timings(attention, q, k, v, grad, mode, device, budget_s))
                    result["useful_tflops_per_s"] = flops / result["median_s"] / 1e12
                except Exception as error:  # a failed compile, too much shared memory, out of memory
                    result.update(failure(error), ok=False)
                row["configs"].append(result)
                print(f"{shape_name} L={L} {mode} {result['label']}: "
                      + (f"{1e3 * result['median_s']:.3f} ms (IQR {1e3 * result['iqr_s']:.3f}), "
                         f"difference {result['max_relative_difference']:.2g}" if "median_s" in result
                         else str(result.get("error") or result.get("out_of_memory"))), flush=True)
            rank(row)
            doc["results"].append(row)
            path.write_text(json.dumps(doc, indent=1))
        del q, k, v, grad, expected, flex
        if device.type == "cuda":
            torch.cuda.empty_cache()


def rank(row: dict) -> None:
    """Each timed setting against the rule's and FlexAttention's times; ``best``: the fastest
    setting (by median) whose check passed."""
    rule = next((c for c in row["configs"] if c["blocks"] is None and "times_s" in c), None)
    flex = row.get("flex", {})
    for config in row["configs"]:
        if "times_s" not in config:
            continue
        if rule is not None:
            config["over_rule"] = compare(config["times_s"], rule["times_s"])
        if "times_s" in flex:
            config["over_flex"] = compare(config["times_s"], flex["times_s"])
    passed = [c for c in row["configs"] if c["ok"] and "median_s" in c]
    row["best"] = min(passed, key=lambda c: c["median_s"])["label"] if passed else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.kernel_tuning",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes and tiles, L = 40, FlexAttention not compiled (for Triton's interpreter)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--lengths", "-L", nargs="+", type=int, default=None, help="default: 16384")
    parser.add_argument("--no-flex", action="store_true", help="leave FlexAttention out")
    parser.add_argument("--budget", type=float, default=0.2, help="seconds of timed calls per setting and mode")
    parser.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--out", default=".", help="the folder the JSON files go to")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    configs = TINY_CONFIGS if args.tiny else CONFIGS
    lengths = args.lengths or (TINY_LENGTHS if args.tiny else LENGTHS)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.shapes:
        B, H, H_kv, d, window = shapes[name]
        doc = {
            "provenance": {**provenance(device, 1, args.commit), "driver": driver_version(),
                           "interpreted": launcher.load_kernels().INTERPRETED},
            "dtype": "bfloat16",
            "shape": {"B": B, "H": H, "H_kv": H_kv, "d": d, "window": window},
            "rule": launcher.launch_config(torch.bfloat16, d, d, launcher.load_kernels().INTERPRETED),
            "check_tolerance": CHECK_TOLERANCE,
            "budget_s": args.budget,
            "results": [],
        }
        path = Path(args.out) / f"kernel-tuning-{name}.json"
        run_shape(name, shapes[name], lengths, configs, device, args.budget, not args.no_flex, doc, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
