"""Memory bandwidth, measured: ``python -m swa_tutorial.bench.bandwidth``.

The roofline of the tiles chapter needs the rate at which a device moves bytes between its main
memory and its cores, beside the matrix-product rate the benchmark records. Two kernels on a
float32 tensor far larger than the caches (default 256 MiB), timed as the benchmark times
(``torch.utils.benchmark`` on the CPU with the run's threads, CUDA events on a GPU):

* ``copy``: ``dst.copy_(src)``, counted as 2 x size bytes (one read, one write: STREAM's rule;
  a CPU that reads a line before writing it moves more, so this is a lower bound of its traffic);
* ``sum``: ``src.sum()``, size bytes read.

The rate is bytes / median time, with the quartiles of the timings; the results, with the
provenance of the benchmark's files, go to one JSON file (``-o``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from swa_tutorial.bench.measure import quartiles, resolve_device, summarize, time_call
from swa_tutorial.bench.sweeps import provenance

SCHEMA = "swa-tutorial-bandwidth/1"


def measure(device, threads: int, size_bytes: int, min_time: float = 1.0, min_reps: int = 5) -> dict:
    """{"copy": ..., "sum": ...}: for each kernel its bytes, timings and rate (bytes per second)."""
    device = resolve_device(device)
    n = size_bytes // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    kernels = {"copy": (lambda: dst.copy_(src), 2 * n * 4), "sum": (lambda: src.sum(), n * 4)}
    results = {}
    for name, (fn, nbytes) in kernels.items():
        fn()  # warm-up, pages touched
        times = time_call(fn, device, threads, min_time, min_reps, first_s=0.0)
        q1, median, q3 = quartiles(times)
        results[name] = {
            "bytes": nbytes,
            "bytes_per_s": nbytes / median,
            "bytes_per_s_quartiles": [nbytes / q3, nbytes / q1],  # the slower time, the lower rate
            **summarize(times),
        }
    return results


def run(device, threads_list, size_bytes: int, min_time: float = 1.0, commit=None) -> dict:
    """The whole run: provenance, configuration and one result per number of threads."""
    device = resolve_device(device)
    doc = {
        "schema": SCHEMA,
        "provenance": provenance(device, max(threads_list), commit),
        "config": {"device": device.type, "size_bytes": size_bytes, "threads": list(threads_list),
                   "min_time_s": min_time, "dtype": "float32"},
        "results": [],
    }
    for threads in threads_list:
        doc["results"].append({"threads": threads, **measure(device, threads, size_bytes, min_time)})
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    return doc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.bandwidth", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", nargs="+", type=int, default=[1], help="CPU threads, one run for each")
    p.add_argument("--size-mib", type=int, default=256, help="size of the tensor copied and summed")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per kernel, at least")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--out", "-o", default=None, help="JSON file for the results (none is written without it)")
    args = p.parse_args(argv)
    doc = run(args.device, args.threads, args.size_mib * 2**20, args.min_time, args.commit)
    for r in doc["results"]:
        print(f"threads {r['threads']}: " + "  ".join(
            f"{name} {r[name]['bytes_per_s'] / 1e9:.1f} GB/s "
            f"[{r[name]['bytes_per_s_quartiles'][0] / 1e9:.1f}-{r[name]['bytes_per_s_quartiles'][1] / 1e9:.1f}]"
            for name in ("copy", "sum")))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
