"""Three ways to compute the band of scores, timed: ``python -m swa_tutorial.bench.band_layouts``.

The whole-layer chapter asks why Longformer computes 2w x 2w chunks rather than exactly the band.
Three layouts give the same band [B*H, L, 2w + 1] for L a multiple of w:

* ``gathered``: every query against its own 2w + 1 keys, L matrix-vector products per row of
  B*H: exactly the useful work;
* ``3w blocks``: each block of w queries against the 3w keys it needs, 3wL multiply-adds per unit
  of d, 1.5 times the useful work;
* ``2w chunks``: the book's chunks (``chunk_scores`` and ``band_scores``), 4w^2 C, about twice.

:func:`run` times them on one CPU thread, counting that thread's own CPU time
(``time.thread_time``), so that other jobs on a shared machine are not counted. Each round times
every layout in turn (``torch.utils.benchmark``, at least ``min_time`` seconds of CPU time each),
so that a slow moment hits all three; the results keep every round's time, and the ratio of each
layout's time to the chunks' of the same round. Each layout is checked against the chunks before
it is timed. The results, with the provenance of the benchmark's files, go to one JSON file (-o).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from swa_tutorial.bench.measure import band_pairs, quartiles
from swa_tutorial.bench.sweeps import provenance
from swa_tutorial.steps.band import band_scores
from swa_tutorial.steps.chunks import chunk, chunk_scores
from swa_tutorial.steps.skewing import skew
from swa_tutorial.steps.values import value_chunks

SCHEMA = "swa-tutorial-band-layouts/1"


def band_by_gathering(q, k, w):
    """[BH, L, d] -> [BH, L, 2w + 1]: each query against its 2w + 1 keys."""
    keys = F.pad(k, (0, 0, w, w)).unfold(1, 2 * w + 1, 1)  # [BH, L, d, 2w + 1]
    # per row of BH: L products [1, d] x [d, 2w + 1], on the view
    return torch.stack([torch.bmm(q[r, :, None], keys[r])[:, 0] for r in range(q.shape[0])])


def band_by_blocks(q, k, w):
    """[BH, L, d] -> [BH, L, 2w + 1]: blocks of w queries against 3w keys."""
    BH, L, d = q.shape
    blocks = q.unflatten(1, (L // w, w))  # [BH, L/w, w, d], a view
    key_chunks = value_chunks(k, w)  # [BH, L/w, 3w, d], a view of K padded
    scores = torch.einsum("rgxd,rgyd->rgxy", blocks, key_chunks)  # [.., w, 3w]
    # query x's key at offset t - w is column x + t of its 3w keys
    return skew(scores, 0, 2 * w + 1).flatten(1, 2).contiguous()


def band_by_chunks(q, k, w):
    """[BH, L, d] -> [BH, L, 2w + 1]: Longformer's 2w x 2w chunks."""
    return band_scores(chunk_scores(chunk(q, w), chunk(k, w)))


LAYOUTS = {"gathered": band_by_gathering, "3w blocks": band_by_blocks, "2w chunks": band_by_chunks}


def work_ratio(seq_len: int, window: int) -> float:
    """The 3w blocks' multiply-adds over the chunks': 3wL / (4 w^2 C), C = L / w - 1."""
    return 3 * window * seq_len / (4 * window**2 * (seq_len // window - 1))


def _check(q, k, w) -> None:
    """Each layout must give the chunks' band before it is timed."""
    expected = band_by_chunks(q, k, w)
    for name, layout in LAYOUTS.items():
        if not torch.allclose(layout(q, k, w), expected, rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"the layout {name!r} does not give the chunks' band for w = {w}")


def measure(BH: int, seq_len: int, head_dim: int, window: int, rounds: int, min_time: float) -> dict:
    """Every round's median time (seconds) of each layout, timed in turn: {layout: [seconds]}."""
    if seq_len % window or seq_len < 2 * window:
        raise ValueError(f"seq_len must be a multiple of window = {window} and at least {2 * window}, got {seq_len}")
    q, k = torch.randn(2, BH, seq_len, head_dim)
    _check(q, k, window)
    timers = {name: benchmark.Timer("f(q, k, w)", timer=time.thread_time, globals=dict(f=f, q=q, k=k, w=window))
              for name, f in LAYOUTS.items()}
    times = {name: [] for name in LAYOUTS}
    for _ in range(rounds):  # interleaved: a slow moment hits all three
        for name, timer in timers.items():
            times[name].append(timer.blocked_autorange(min_run_time=min_time).median)
    return times


def summary(times: list[float]) -> dict:
    q1, median, q3 = quartiles(times)
    return {"median": median, "iqr": q3 - q1, "quartiles": [q1, q3]}


def run(BH=4, seq_len=2048, head_dim=64, windows=(16, 64, 256), rounds=9, min_time=0.2, seed=0, commit=None) -> dict:
    """The whole run on one CPU thread: provenance, configuration and one result per window and layout."""
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, whose own CPU time is measured
    try:
        doc = {
            "schema": SCHEMA,
            "provenance": provenance(torch.device("cpu"), 1, commit),
            "config": {"BH": BH, "L": seq_len, "d": head_dim, "windows": list(windows), "rounds": rounds,
                       "min_time_s": min_time, "seed": seed, "dtype": "float32", "threads": 1,
                       "timer": "time.thread_time, torch.utils.benchmark blocked_autorange, rounds interleaved"},
            "results": [],
        }
        for w in windows:
            times = measure(BH, seq_len, head_dim, w, rounds, min_time)
            for name, t in times.items():
                ratios = [a / b for a, b in zip(t, times["2w chunks"])]
                doc["results"].append({
                    "window": w, "layout": name, "times_s": t, "time_s": summary(t),
                    "ratio_to_chunks": {**summary(ratios), "per_round": ratios},
                    "useful_flops": 2 * BH * band_pairs(seq_len, w) * head_dim,
                })
    finally:
        torch.set_num_threads(threads)
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    return doc


def table(doc: dict) -> str:
    """The results as the chapter prints them: median [IQR] ms, ratio to the chunks, useful GFLOP/s."""
    lines = []
    for w in doc["config"]["windows"]:
        lines.append(f"w = {w}:{'ms':>12} {'/ 2w chunks':>16} {'useful GFLOP/s':>15}")
        for r in (r for r in doc["results"] if r["window"] == w):
            t, ratio = r["time_s"], r["ratio_to_chunks"]
            lines.append(f"  {r['layout']:10} {1e3 * t['median']:6.1f} [{1e3 * t['iqr']:4.1f}] "
                         f"{ratio['median']:8.2f} [{ratio['iqr']:4.2f}] {r['useful_flops'] / t['median'] / 1e9:15.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.band_layouts", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bh", type=int, default=4, help="rows of B*H")
    p.add_argument("-L", type=int, default=2048, help="sequence length, a multiple of every window")
    p.add_argument("-d", type=int, default=64, help="head dimension")
    p.add_argument("--windows", nargs="+", type=int, default=[16, 64, 256], help="one-sided windows w")
    p.add_argument("--rounds", type=int, default=9, help="rounds, each timing every layout once")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds of CPU time per timing, at least")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--out", "-o", default=None, help="JSON file for the results (none is written without it)")
    args = p.parse_args(argv)
    doc = run(args.bh, args.L, args.d, args.windows, args.rounds, args.min_time, commit=args.commit)
    print(table(doc))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
