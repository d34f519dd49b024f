"""Sequence parallelism on gloo, measured: ``python -m swa_tutorial.bench.sequence_parallel``.

In local gloo worlds (:func:`swa_tutorial.distributed.run_gloo`, one CPU thread per process) of
each size asked for, with shards of n tokens per rank, it times on every rank:

* ``halo``: :func:`~swa_tutorial.distributed.exchange_halo`, the exchange a
  :func:`~swa_tutorial.distributed.sequence_parallel_attention` call makes (forward), with the
  copy that lays out [left halo | shard | right halo];
* ``attention``: the single-device attention each rank then computes, on its shard and halos;
* ``sequence_parallel``: the whole :func:`~swa_tutorial.distributed.sequence_parallel_attention`
  forward (metadata, exchange, attention), checked against the single-device function on the
  whole sequence before it is timed;
* the messages alone of each way to shard attention, without their attention: ``halo_messages``
  (the halo's point-to-point messages, no copy), ``ring`` (M - 1 steps on M ranks passing key/value shards around the ring), ``all_gather`` (of the keys
  and values) and ``all_to_all`` (DeepSpeed-Ulysses: q, k, v to head shards, the output back).

Each repetition starts after a barrier; its time is the slowest rank's. The methods take turns,
repetition by repetition, so that a busy moment of the machine falls on all of them alike. The bytes each rank
sends are counted from the tensors it hands to torch.distributed and must equal the cost model
(:func:`~swa_tutorial.distributed.halo_bytes` and the others). The results, with provenance,
go to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.bench.measure import summarize
from swa_tutorial.bench.sweeps import provenance
from swa_tutorial.distributed import (
    all_gather_bytes,
    all_to_all_bytes,
    exchange_halo,
    halo_bytes,
    halo_plan,
    post_transfers,
    ring_bytes,
    run_gloo,
    sequence_parallel_attention,
)

SCHEMA = "swa-tutorial-sequence-parallel/1"


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def _halo_messages(kv: torch.Tensor, plan, start: int):
    """The halo's messages alone: each transfer's keys and values, sent as they lie in memory."""
    def outgoing(t):
        return [kv[:, t.start - start:t.stop - start]]  # contiguous: B = 1

    def incoming(t):
        return [kv.new_empty(kv.shape[0], t.stop - t.start, *kv.shape[2:])]

    return post_transfers(plan, dist.get_rank(), dist.group.WORLD, outgoing, incoming)


def _ring(kv: torch.Tensor):
    """M - 1 steps on M ranks: send the block held to the next rank, receive the previous one's (equal shards)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    held, sent = kv, 0
    for _ in range(world - 1):
        incoming = torch.empty_like(held)
        ops = [dist.P2POp(dist.isend, held, (rank + 1) % world), dist.P2POp(dist.irecv, incoming, (rank - 1) % world)]
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        held, sent = incoming, sent + _nbytes(held)
    return sent


def _all_gather(kv: torch.Tensor):
    """Every rank gets every shard of keys and values (equal shards)."""
    gathered = [torch.empty_like(kv) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, kv)
    return _nbytes(kv) * (dist.get_world_size() - 1)


def _all_to_all(qkv: torch.Tensor, d_v: int):
    """Ulysses: [B, n, H, 2d + d_v] sequence shards -> head shards of the whole sequence, and the
    output [B, L, H / M, d_v] back (M ranks) (here the values stand in for it: same size)."""
    world = dist.get_world_size()
    B, n, H, e = qkv.shape
    send = qkv.unflatten(2, (world, H // world)).movedim(2, 0).contiguous()  # M x B x n x H/M x e
    received = torch.empty_like(send)  # from each rank: its tokens, my heads
    dist.all_to_all_single(received, send)
    out = received[..., -d_v:].contiguous()  # M x B x n x H/M x d_v: my heads' output, per rank's tokens
    back = torch.empty_like(out)
    dist.all_to_all_single(back, out)
    mine = dist.get_rank()
    return _nbytes(send) - _nbytes(send[mine]) + _nbytes(out) - _nbytes(out[mine])


def _timed(runs: dict, reps: int) -> dict[str, list[float]]:
    """This rank's time of each repetition of each run, each started after a barrier, after one
    warm-up each. The runs take turns, repetition by repetition, so that the machine's load
    (other processes come and go) falls on all of them alike."""
    for fn in runs.values():
        fn()
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            dist.barrier()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def measure(n: int, window, heads: int, head_dim: int, reps: int, seed: int = 0) -> dict:
    """On every rank of an initialized gloo world: one configuration, n tokens per rank, float32.
    Returns this rank's times (s) and bytes sent per method, and its largest difference from the
    single-device function on the whole sequence."""
    rank, world = dist.get_rank(), dist.get_world_size()
    lengths = [n] * world
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, n * world, heads, head_dim, generator=gen) for _ in range(3))
    mine = slice(rank * n, (rank + 1) * n)
    expected = sliding_window_attention(q, k, v, window)[:, mine]
    q, k, v = q[:, mine].contiguous(), k[:, mine].contiguous(), v[:, mine].contiguous()
    stats = {}
    error = float((sequence_parallel_attention(q, k, v, window, stats=stats) - expected).abs().max())
    k_ext, v_ext, _, before = exchange_halo(k, v, lengths, window)
    q_ext = torch.nn.functional.pad(q, (0, 0, 0, 0, before, k_ext.shape[1] - before - n))
    kv, qkv = torch.cat([k, v], dim=-1), torch.cat([q, k, v], dim=-1)
    plan = halo_plan(lengths, window)
    sent = {"halo": stats["forward_bytes"], "halo_messages": _halo_messages(kv, plan, rank * n), "ring": _ring(kv),
            "all_gather": _all_gather(kv), "all_to_all": _all_to_all(qkv, head_dim)}
    runs = {
        "halo": lambda: exchange_halo(k, v, lengths, window),
        "attention": lambda: sliding_window_attention(q_ext, k_ext, v_ext, window),
        "sequence_parallel": lambda: sequence_parallel_attention(q, k, v, window),
        "halo_messages": lambda: _halo_messages(kv, plan, rank * n),
        "ring": lambda: _ring(kv),
        "all_gather": lambda: _all_gather(kv),
        "all_to_all": lambda: _all_to_all(qkv, head_dim),
    }
    with torch.no_grad():
        times = _timed(runs, reps)
    return {"rank": rank, "error": error, "bytes": sent, "times_s": times}


def run(worlds, tokens_per_rank, window, heads: int, head_dim: int, reps: int, commit=None) -> dict:
    """Every (world size, n) configuration; returns the results document (checked: the bytes
    sent equal the cost model, the outputs the single-device function's within float32 rounding)."""
    doc = {
        "schema": SCHEMA,
        "provenance": {**provenance(torch.device("cpu"), 1, commit), "backend": "gloo", "threads_per_process": 1},
        "config": {"worlds": list(worlds), "tokens_per_rank": list(tokens_per_rank), "window": list(window),
                   "B": 1, "H": heads, "d": head_dim, "dtype": "float32", "reps": reps,
                   "timing": "each repetition after a barrier, the methods in turn; its time is the slowest rank's"},
        "results": [],
    }
    sizes = {"heads": heads, "head_dim": head_dim, "itemsize": 4}
    for world in worlds:
        for n in tokens_per_rank:
            ranks = run_gloo(measure, world, n, tuple(window), heads, head_dim, reps, timeout=900)
            lengths = [n] * world
            halo = halo_bytes(lengths, tuple(window), **sizes)
            model = {"halo": halo, "halo_messages": halo, "ring": ring_bytes(lengths, **sizes),
                     "all_gather": all_gather_bytes(lengths, **sizes), "all_to_all": all_to_all_bytes(lengths, **sizes)}
            for method, predicted in model.items():
                counted = [r["bytes"][method] for r in ranks]
                if counted != predicted:
                    raise AssertionError(f"{method}, M={world}, n={n}: sent {counted}, the model says {predicted}")
            error = max(r["error"] for r in ranks)
            if error > 1e-4:
                raise AssertionError(f"M={world}, n={n}: differs from one process by {error:.1e}")
            slowest = {name: [max(r["times_s"][name][i] for r in ranks) for i in range(reps)]
                       for name in ranks[0]["times_s"]}
            doc["results"].append({"world": world, "tokens_per_rank": n, "max_abs_error": error,
                                   "bytes_per_rank": model, "times": {k: summarize(t) for k, t in slowest.items()}})
            print(table_row(doc["results"][-1]), flush=True)
    doc["provenance"]["load_average_at_end"] = list(os.getloadavg())
    return doc


def table_row(result: dict) -> str:
    times = "  ".join(f"{name} {t['median_s'] * 1e3:.2f} ms (IQR {t['iqr_s'] * 1e3:.2f})"
                      for name, t in result["times"].items())
    return f"M={result['world']} n={result['tokens_per_rank']}: {times}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.sequence_parallel", description=__doc__.split("\n")[0])
    p.add_argument("--worlds", nargs="+", type=int, default=[2, 4], help="numbers of processes")
    p.add_argument("--tokens-per-rank", "-n", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--window", nargs=2, type=int, default=[256, 256], metavar=("LEFT", "RIGHT"))
    p.add_argument("-H", type=int, default=8, help="heads (a multiple of every world size)")
    p.add_argument("-d", type=int, default=64, help="head dim")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--out", "-o", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    doc = run(args.worlds, args.tokens_per_rank, args.window, args.H, args.d, args.reps, args.commit)
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
