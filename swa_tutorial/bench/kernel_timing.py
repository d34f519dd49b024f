"""The Triton kernel against FlexAttention and SDPA on one GPU: forward and forward + backward times.

    python -m swa_tutorial.bench.kernel_timing --out DIR          # CUDA: bfloat16, L = 16K, 32K, 64K
    TRITON_INTERPRET=1 python -m swa_tutorial.bench.kernel_timing --device cpu --tiny --out DIR

Two shapes (SHAPES): the book's (B = 1, H = 12, d = 64, window (256, 256)) and Mistral's grouped
heads (B = 1, H = 32, H_kv = 8, d = 128, causal window (4095, 0)). For each shape, length and mode
(fwd, fwd+bwd) every implementation runs on the same [B, L, heads, d] inputs:

* ``triton``: the package's kernel (backend "triton") and the entry point's output cast to the
  input dtype, which is what ``sliding_window_attention(..., backend="triton")`` runs for them;
* ``flex``: FlexAttention under torch.compile, its block mask built before the timing;
* ``sdpa_flash``: SDPA's flash backend without a window (causal for a causal window): the dense
  reference point, not the band;
* ``sdpa_band``: SDPA with the window as a boolean L x L mask, built before the timing (k and v
  repeated to H heads inside the call for grouped heads).

Timing: one warm-up call (it compiles), then CUDA events around each call, as many calls as
``--budget`` seconds allow (3 to 100); the median and the interquartile range are kept, and every
time. Useful FLOP/s count only the cells inside the window (:func:`useful_flops`), against the
bfloat16 matrix-product rate measured in the same run. Before the timing, each implementation's
forward output is compared with the kernel's (the largest difference is recorded). One JSON file
per shape, kernel-timing-SHAPE.json, written after every configuration, so that a run cut short
keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from swa_tutorial.backends.triton import launcher
from swa_tutorial.bench.measure import compare, is_out_of_memory, matmul_peak, resolve_device, summarize
from swa_tutorial.bench.sweeps import provenance
from swa_tutorial.core.precision import OutputCast

# name: (B, H, H_kv, d, (left, right))
SHAPES = {"book": (1, 12, 12, 64, (256, 256)), "mistral": (1, 32, 8, 128, (4095, 0))}
TINY_SHAPES = {"book": (1, 2, 2, 16, (8, 8)), "mistral": (1, 4, 2, 32, (15, 0))}
LENGTHS = (16384, 32768, 65536)
TINY_LENGTHS = (48,)
MODES = ("fwd", "fwd+bwd")
NAMES = ("triton", "flex", "sdpa_flash", "sdpa_band")


def window_pairs(seq_len: int, left: int, right: int) -> int:
    """The (query, key) pairs with -left <= j - i <= right in an L x L matrix:
    L (left + right + 1) - left (left + 1) / 2 - right (right + 1) / 2, the sides clipped to L - 1."""
    left, right = min(left, seq_len - 1), min(right, seq_len - 1)
    return seq_len * (left + right + 1) - left * (left + 1) // 2 - right * (right + 1) // 2


def useful_flops(batch: int, heads: int, seq_len: int, window, head_dim: int, backward: bool) -> int:
    """4 B H N d for the forward (a d-long dot product and a d-long multiply-add per pair of the
    N in the window), 3 times that for forward + backward (two products per forward product)."""
    return 4 * batch * heads * window_pairs(seq_len, *window) * head_dim * (3 if backward else 1)


_compiled_flex = []  # one torch.compile wrapper per process, so that its compilations are reused


def _flex(compiled):
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if not _compiled_flex:
        _compiled_flex.append(torch.compile(flex_attention))
    return _compiled_flex[0]


def _heads_first(*xs):  # [B, L, H, d] -> [B, H, L, d], views
    return [x.transpose(1, 2) for x in xs]


def triton_attention(window, blocks=None):
    """The package's kernel over ``window``, out cast to the input dtype as the entry point does
    (``launcher.attend``'s ``blocks``: its launch settings, None for its rule's)."""

    def attention(q, k, v):
        out, _ = launcher.attend(q, k, v, window, None, q.shape[-1] ** -0.5, 0.0, blocks=blocks)
        return OutputCast.apply(out, q.dtype)

    return attention


class Implementations:
    """The four implementations for one shape and length, their masks built here (untimed)."""

    def __init__(self, seq_len, heads, kv_heads, window, device, compiled):
        from torch.nn.attention.flex_attention import create_block_mask

        left, right = window
        self.window, self.gqa = window, heads != kv_heads
        self.causal = right == 0

        def in_window(b, h, q_idx, kv_idx):
            return (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)

        self.block_mask = create_block_mask(in_window, None, None, seq_len, seq_len, device=device, _compile=compiled)
        self.flex = _flex(compiled)
        self.band = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril_(right).triu_(-left)
        self.triton = triton_attention(window)

    def flex_attention(self, q, k, v):
        out = self.flex(*_heads_first(q, k, v), block_mask=self.block_mask, enable_gqa=self.gqa)
        return out.transpose(1, 2)

    def sdpa_flash(self, q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(*_heads_first(q, k, v), is_causal=self.causal, enable_gqa=self.gqa)
        return out.transpose(1, 2)

    def sdpa_band(self, q, k, v):
        group = q.shape[2] // k.shape[2]
        k, v = (x.repeat_interleave(group, dim=2) for x in (k, v))
        return F.scaled_dot_product_attention(*_heads_first(q, k, v), attn_mask=self.band).transpose(1, 2)

    def get(self, name):
        return {"flex": self.flex_attention}.get(name) or getattr(self, name)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, budget_s: float, min_reps: int = 3, max_reps: int = 100) -> list[float]:
    """Seconds per call of ``fn()``, after one warm-up call: CUDA events on a GPU (a wall clock on
    the CPU), as many calls as ``budget_s`` allows, at least ``min_reps``, at most ``max_reps``."""
    fn()
    _synchronize(device)
    times = []
    while len(times) < min_reps or (sum(times) < budget_s and len(times) < max_reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return times


def timed_call(attention, q, k, v, grad, mode):
    """The timed call: the forward, or the forward and the gradients of q, k, v."""
    if mode == "fwd":

        def forward():
            with torch.no_grad():
                return attention(q, k, v)

        return forward
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    return lambda: torch.autograd.grad(attention(*leaves), leaves, grad)


def timings(attention, q, k, v, grad, mode, device, budget_s) -> dict:
    """Median, IQR and every time of one mode of ``attention`` (:func:`timed_call`), and the
    seconds the timing took."""
    started = time.perf_counter()
    times = time_calls(timed_call(attention, q, k, v, grad, mode), device, budget_s)
    return {**summarize(times), "seconds_total": time.perf_counter() - started}


def failure(error: Exception) -> dict:
    """An error as a result: {"out_of_memory" or "error": its type and message}."""
    kind = "out_of_memory" if is_out_of_memory(error) else "error"
    return {kind: f"{type(error).__name__}: {error}"[:2000]}


def measure_one(impls, name, q, k, v, grad, mode, device, budget_s, reference) -> dict:
    """Time one implementation; its forward compared with ``reference`` (the kernel's) first."""
    attention = impls.get(name)
    try:
        with torch.no_grad():
            out = attention(q, k, v)
        result = {"max_abs_diff_to_triton": (out.float() - reference.float()).abs().max().item() if reference is not None else 0.0}
        del out
        result.update(timings(attention, q, k, v, grad, mode, device, budget_s))
    except Exception as error:  # an out-of-memory or a failed compile is a result too
        return failure(error)
    return result


def run_shape(shape_name, shape, lengths, device, dtype, budget_s, compiled, names, doc, path):
    """Every length, mode and implementation of one shape, into doc["results"], written to ``path``."""
    B, H, H_kv, d, window = shape
    peak = doc["matmul_peak"]["flops_per_s"]
    for L in lengths:
        g = torch.Generator(device=device).manual_seed(L)
        q, k, v = (torch.randn(B, L, h, d, generator=g, device=device, dtype=dtype) for h in (H, H_kv, H_kv))
        grad = torch.randn(B, L, H, d, generator=g, device=device, dtype=dtype)
        impls = Implementations(L, H, H_kv, window, device, compiled)
        with torch.no_grad():
            reference = impls.triton(q, k, v)
        for mode in MODES:
            flops = useful_flops(B, H, L, window, d, mode == "fwd+bwd")
            row = {"shape": shape_name, "seq_len": L, "mode": mode, "useful_flops": flops, "implementations": {}}
            for name in names:
                result = measure_one(impls, name, q, k, v, grad, mode, device, budget_s, reference)
                if "median_s" in result:
                    result["useful_tflops_per_s"] = flops / result["median_s"] / 1e12
                    result["fraction_of_matmul_peak"] = flops / result["median_s"] / peak
                row["implementations"][name] = result
                print(f"{shape_name} L={L} {mode} {name}: "
                      + (f"{1e3 * result['median_s']:.3f} ms (IQR {1e3 * result['iqr_s']:.3f}), "
                         f"{result['useful_tflops_per_s']:.1f} useful TFLOP/s" if "median_s" in result else str(result)),
                      flush=True)
            timed = row["implementations"]
            for other in ("flex", "sdpa_flash", "sdpa_band"):
                if "times_s" in timed.get("triton", {}) and "times_s" in timed.get(other, {}):
                    row[f"triton_over_{other}"] = compare(timed["triton"]["times_s"], timed[other]["times_s"])
            doc["results"].append(row)
            path.write_text(json.dumps(doc, indent=1))
        del impls, q, k, v, grad, reference
        if device.type == "cuda":
            torch.cuda.empty_cache()


def driver_version() -> str | None:
    """The NVIDIA driver's version (nvidia-smi), None without one."""
    try:
        command = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.kernel_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, L = 48, no torch.compile (for Triton's interpreter)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--lengths", "-L", nargs="+", type=int, default=None, help="default: 16384 32768 65536")
    parser.add_argument("--impls", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of timed calls per configuration (default 0.3)")
    parser.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    parser.add_argument("--out", default=".", help="the folder the JSON files go to")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = torch.bfloat16
    shapes = TINY_SHAPES if args.tiny else SHAPES
    lengths = args.lengths or (TINY_LENGTHS if args.tiny else LENGTHS)
    compiled = not args.tiny
    peak = matmul_peak(device, dtype, 1, 256 if args.tiny else 8192)
    peak.pop("times_s")
    for name in args.shapes:
        doc = {
            "provenance": {**provenance(device, 1, args.commit), "driver": driver_version(),
                           "interpreted": launcher.load_kernels().INTERPRETED},
            "dtype": str(dtype).removeprefix("torch."),
            "shape": dict(zip(("B", "H", "H_kv", "d", "window"), shapes[name])),
            "budget_s": args.budget,
            "matmul_peak": peak,
            "results": [],
        }
        path = Path(args.out) / f"kernel-timing-{name}.json"
        run_shape(name, shapes[name], lengths, device, dtype, args.budget, compiled, args.impls, doc, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
