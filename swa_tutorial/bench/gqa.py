"""Grouped heads without repeated keys, and decoding against a cache: time and peak memory.

    python -m swa_tutorial.bench.gqa [--lengths 16384 32768] [--impls swa sdpa_mask_gqa ...]
                                     [--threads 1] [--out FILE.json]

Prefill (``--lengths``): B = 1, H = 32 query heads sharing H_kv = 8 key/value heads, d = 128,
float32, the causal window (4095, 0) (Mistral's W = 4096 keys), forward only. Implementations:

* ``swa``: ``sliding_window_attention(q, k, v, (4095, 0))``, the default backend ("auto");
* ``swa_repeated``: the same call after repeating k and v to H heads, the repeat inside the
  measured call (what a caller without grouped heads has to do);
* ``sdpa_mask_gqa``: ``scaled_dot_product_attention`` with the window as a boolean L x L mask
  and ``enable_gqa=True``;
* ``sdpa_mask_repeated``: the same mask, k and v repeated inside the measured call.

``--impls`` measures some of them (default: all four; ``swa`` always, since every ratio is to it).

The mask is made before the call, as a model makes it once per batch, but inside the memory
measurement (it is what SDPA costs a sliding window).

Decoding (``--cache``, measured first): one query (L_q = 1) against a cache of L_k keys, the same heads and window:
``swa`` aligns the query to the end of the keys itself; ``sdpa_last_w`` runs SDPA
(``enable_gqa=True``, no mask) over the last W = 4096 keys it slices off the cache.

Each (case, implementation) runs in a fresh process: inputs from a fixed seed; one call under the
peak-memory probe (the increment of the process's peak resident memory,
:class:`~swa_tutorial.bench.measure.PeakMemory`); that call's output checked against float64
dense attention (on three slices of 64 queries for prefill: start, middle, end; each slice's
queries see only the keys up to 4095 before them, so the reference is exact); only then the
timing (``torch.utils.benchmark`` at the given thread count, at least ``--reps`` calls). The
ratios compare two implementations of one run: median over median, with the ratios the
quartiles allow (:func:`~swa_tutorial.bench.measure.compare`). Results and provenance go to one
JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.bench.correctness import TOLERANCE
from swa_tutorial.bench.measure import PeakMemory, compare, summarize, time_call
from swa_tutorial.bench.sweeps import provenance, write
from swa_tutorial.core.heads import repeat_kv
from swa_tutorial.core.windows import window_mask
from swa_tutorial.reference import dense_attention

SCHEMA = "swa-tutorial-gqa/1"
PREFILL = ("swa", "swa_repeated", "sdpa_mask_gqa", "sdpa_mask_repeated")
DECODING = ("swa", "sdpa_last_w")
CHECK_ROWS = 64  # queries per checked slice


def sdpa(q, k, v, **kwargs):
    """``scaled_dot_product_attention`` on [B, L, H, d] tensors."""
    return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), **kwargs).transpose(1, 2)


def calls(spec: dict, q, k, v):
    """{name: (prepare, call)}: ``prepare()`` makes what the call reads besides q, k, v (the mask);
    ``call(state)`` is what is measured."""
    window, H = tuple(spec["window"]), spec["H"]
    mask = lambda: window_mask(q.shape[1], window, q.device, key_len=k.shape[1])  # noqa: E731
    last = window[0] + 1  # the W keys a decoding step may see
    return {
        "swa": (lambda: None, lambda _: sliding_window_attention(q, k, v, window)),
        "swa_repeated": (lambda: None, lambda _: sliding_window_attention(q, repeat_kv(k, H), repeat_kv(v, H), window)),
        "sdpa_mask_gqa": (mask, lambda m: sdpa(q, k, v, attn_mask=m, enable_gqa=True)),
        "sdpa_mask_repeated": (mask, lambda m: sdpa(q, repeat_kv(k, H), repeat_kv(v, H), attn_mask=m)),
        "sdpa_last_w": (lambda: None, lambda _: sdpa(q, k[:, -last:], v[:, -last:], enable_gqa=True)),
    }


def inputs(spec: dict):
    """Seeded q [B, L_q, H, d], k and v [B, L_k, H_kv, d], float32, on the CPU."""
    g = torch.Generator().manual_seed(spec["seed"])
    B, H, H_kv, d = spec["B"], spec["H"], spec["H_kv"], spec["d"]
    q = torch.randn(B, spec["q_len"], H, d, generator=g)
    k, v = (torch.randn(B, spec["k_len"], H_kv, d, generator=g) for _ in range(2))
    return q, k, v


def check(spec: dict, q, k, v, out) -> dict:
    """The largest error of ``out`` against float64 dense attention, relative to the largest
    reference value, on slices of queries (every query for short L_q)."""
    L_q, L_k, left = q.shape[1], k.shape[1], spec["window"][0]
    n = min(L_q, CHECK_ROWS)
    worst = 0.0
    for a in sorted({0, (L_q - n) // 2, L_q - n}):
        b = a + n
        first = max(0, b + L_k - L_q - n - left)  # the first key query a sees (end-aligned)
        ref = dense_attention(*(x.double() for x in (q[:, a:b], k[:, first : b + L_k - L_q], v[:, first : b + L_k - L_q])),
                              tuple(spec["window"]))
        worst = max(worst, ((out[:, a:b].double() - ref).abs().max() / ref.abs().max()).item())
    return {"max_relative_error": worst, "ok": worst <= TOLERANCE[torch.float32]}


def measure(spec: dict) -> dict:
    """One (case, implementation): memory of one call, its check, then the timing."""
    torch.set_num_threads(spec["threads"])
    q, k, v = inputs(spec)
    prepare, call = calls(spec, q, k, v)[spec["impl"]]
    result = {key: spec[key] for key in ("case", "impl", "q_len", "k_len")}
    with PeakMemory("cpu") as memory:
        state = prepare()
        start = time.perf_counter()
        out = call(state)
        first_s = time.perf_counter() - start
    result["memory_bytes"] = memory.bytes
    result["check"] = check(spec, q, k, v, out)
    if not result["check"]["ok"]:
        return {**result, "status": "wrong"}
    del out
    times = time_call(lambda: call(state), "cpu", spec["threads"], spec["min_time"], spec["reps"], first_s)
    return {**result, "status": "ok", **summarize(times)}


def measure_isolated(spec: dict) -> dict:
    """:func:`measure` in a fresh Python process, so that its peak memory is its own."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "swa_tutorial.bench.gqa", "--child", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        return {key: spec[key] for key in ("case", "impl", "q_len", "k_len")} | {
            "status": "error", "reason": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratios(results: list[dict]) -> list[dict]:
    """``swa`` against each other implementation of the same case and lengths: time (median ratio,
    quartile range) and peak memory."""
    ok = {(r["case"], r["q_len"], r["k_len"], r["impl"]): r for r in results if r["status"] == "ok"}
    rows = []
    for (case, q_len, k_len, impl), r in ok.items():
        ours = ok.get((case, q_len, k_len, "swa"))
        if impl == "swa" or ours is None:
            continue
        rows.append({"case": case, "q_len": q_len, "k_len": k_len, "swa_over": impl,
                     "time": compare(ours["times_s"], r["times_s"]),
                     "memory": ours["memory_bytes"] / r["memory_bytes"] if r["memory_bytes"] else None})
    return rows


def run(config: dict, isolate: bool = True, progress=print, save=None) -> dict:
    """Every prefill length and the decoding step, each implementation in turn. ``save``, if given,
    is called with the results so far after each one (an interrupted run keeps them)."""
    base = {key: config[key] for key in ("B", "H", "H_kv", "d", "window", "threads", "reps", "min_time", "seed")}
    specs = [{**base, "case": "decoding", "impl": impl, "q_len": 1, "k_len": config["cache"]}
             for impl in (DECODING if config["cache"] else ())]
    impls = [impl for impl in PREFILL if impl == "swa" or impl in config.get("impls", PREFILL)]
    specs += [{**base, "case": "prefill", "impl": impl, "q_len": L, "k_len": L}
              for L in config["lengths"] for impl in impls]
    results = []
    for spec in specs:
        result = measure_isolated(spec) if isolate else measure(spec)
        results.append(result)
        progress(line(result))
        if save:
            save({"results": results, "ratios": ratios(results)})
    return {"results": results, "ratios": ratios(results)}


def line(r: dict) -> str:
    """One result as text."""
    head = f"{r['case']:8} L_q={r['q_len']:>6} L_k={r['k_len']:>6} {r['impl']:19}"
    if r["status"] != "ok":
        return f"{head} {r['status']}: {r.get('reason', r.get('check'))}"
    return (f"{head} median {1e3 * r['median_s']:10.2f} ms (IQR {1e3 * r['iqr_s']:.2f}, {len(r['times_s'])} timings), "
            f"peak +{r['memory_bytes'] / 2**20:8.1f} MiB")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.gqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="*", default=[16384, 32768], help="prefill lengths L")
    parser.add_argument("--cache", type=int, default=16384, help="the decoding step's cache length (0: none)")
    parser.add_argument("--impls", nargs="+", choices=PREFILL, default=list(PREFILL),
                        help="the prefill implementations to measure (swa always)")
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--window", type=int, default=4095, help="left side of the causal window (left, 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed calls at least")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls at least")
    parser.add_argument("--out", help="write the results as JSON here (e.g. book/data/cpu-float32-gqa.json)")
    parser.add_argument("--commit", help="the git commit measured, for the provenance (default: asked of git)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))), flush=True)
        return
    config = {"B": 1, "H": args.heads, "H_kv": args.kv_heads, "d": args.head_dim, "window": [args.window, 0],
              "lengths": args.lengths, "impls": args.impls, "cache": args.cache, "threads": args.threads,
              "reps": args.reps, "min_time": args.min_time, "seed": 0, "dtype": "float32", "mode": "forward"}
    doc = {"schema": SCHEMA, "provenance": provenance(torch.device("cpu"), args.threads, args.commit), "config": config}

    def save(results: dict) -> None:
        if args.out:
            write({**doc, **results}, args.out)

    doc.update(run(config, progress=lambda text: print(text, flush=True), save=save))
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    for r in doc["ratios"]:
        t = r["time"]
        memory = "" if r["memory"] is None else f", peak memory x{r['memory']:.2f}"
        print(f"{r['case']} L_k={r['k_len']}: swa / {r['swa_over']}: time x{t['ratio']:.3f} "
              f"(quartiles allow {t['low']:.3f} .. {t['high']:.3f}){memory}")
    if args.out:
        write(doc, args.out)


if __name__ == "__main__":
    main()
