"""Running sequence parallelism: local gloo processes (:func:`run_gloo`), and the self-checking
demo and command line (``python -m swa_tutorial.distributed``)."""

from __future__ import annotations

import argparse
import datetime
import io
import os
import queue
import sys
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.core.validation import check_int
from swa_tutorial.distributed.exchange import sequence_parallel_attention
from swa_tutorial.distributed.plan import (
    check_lengths,
    halo_bytes,
    halo_plan,
    shard_starts,
)

# ---------------------------------------------------------------------------------------------
# Running it: local gloo processes, and the self-checking demo (python -m swa_tutorial.distributed).


def _worker(fn, rank, world_size, store, timeout, results, args, kwargs) -> None:
    """One process of :func:`run_gloo`: join the group, run ``fn``, report through ``results``."""
    torch.set_num_threads(1)  # the processes share the machine's cores
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        dist.barrier()  # every rank connected before any may finish and leave
        try:
            value = fn(*args, **kwargs)
        finally:
            dist.destroy_process_group()
        buffer = io.BytesIO()
        torch.save(value, buffer)  # plain bytes through the queue: no shared memory to outlive us
        results.put((rank, True, buffer.getvalue()))
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        results.put((rank, False, traceback.format_exc()))


def run_gloo(fn, world_size: int, *args, timeout: float = 60.0, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` in ``world_size`` local processes joined in a gloo process
    group (CPU); return what each returned, in rank order.

    A quick way to try :func:`sequence_parallel_attention` without torchrun, in a script or a
    notebook. Processes are forked on Linux (quick: nothing to import again) and spawned
    elsewhere (then ``fn`` must be importable from a module, not defined in ``__main__``); each
    uses one CPU thread. If any rank raises, this raises a RuntimeError holding every failing
    rank's traceback; ranks still running after ``timeout`` seconds (a hang: also the timeout of
    each collective) are ended and a TimeoutError raised.
    """
    world_size = check_int(world_size, "world_size", 1)
    context = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        processes = [context.Process(target=_worker, daemon=True,
                                     args=(fn, rank, world_size, store, timeout, results, args, kwargs))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        reports, deadline = {}, time.monotonic() + timeout
        try:
            while len(reports) < world_size:
                rank, ok, value = results.get(timeout=max(deadline - time.monotonic(), 0.01))
                reports[rank] = ok, value
        except queue.Empty:
            missing = sorted(set(range(world_size)) - set(reports))
            raise TimeoutError(f"run_gloo: rank(s) {missing} did not finish within {timeout} s") from None
        finally:
            for process in processes:  # all reported: they are leaving; a hang: end it now
                process.join(timeout=10 if len(reports) == world_size else 0)
                if process.is_alive():
                    process.kill()
                    process.join()
    failed = [f"rank {rank} raised:\n{value}" for rank, (ok, value) in sorted(reports.items()) if not ok]
    if failed:
        raise RuntimeError("run_gloo: " + "\n".join(failed))
    return [torch.load(io.BytesIO(reports[rank][1]), weights_only=False) for rank in range(world_size)]


def attend_shards(q, k, v, window, lengths, *, grad=None, key_padding_mask=None, **kwargs) -> dict:
    """On every rank of an initialized group: this rank's shard of whole-sequence tensors through
    :func:`sequence_parallel_attention`, and its backward when ``grad`` is given.

    For trying the exchange out where every rank can hold the whole problem (with
    :func:`run_gloo`, in a notebook or a test): q, k [B, L, H, d] and v [B, L, H, d_v] are cut into
    shards of ``lengths`` tokens (one int per rank, in rank order, summing to L), as is
    ``key_padding_mask`` (bool [B, L]); ``grad`` [B, L, H, d_v] is the gradient of the whole
    output; other keyword arguments go to :func:`sequence_parallel_attention`. Returns this
    rank's ``{"out": [B, n, H, d_v], "grads": (dq, dk, dv) of its shard or None, "stats": the
    bytes it sent}``.
    """
    rank, world = dist.get_rank(kwargs.get("group")), dist.get_world_size(kwargs.get("group"))
    starts = shard_starts(check_lengths(lengths))
    if len(lengths) != world or starts[-1] != q.shape[1]:
        raise ValueError(f"lengths must hold one shard length per rank ({world}) summing to L = {q.shape[1]}, "
                         f"got {list(lengths)}")
    mine = slice(starts[rank], starts[rank + 1])
    shard = [x.detach()[:, mine].clone().requires_grad_(grad is not None) for x in (q, k, v)]
    mask = None if key_padding_mask is None else key_padding_mask[:, mine]
    stats = {}
    out = sequence_parallel_attention(*shard, window, key_padding_mask=mask, stats=stats, **kwargs)
    if grad is not None:
        out.backward(grad[:, mine])
    return {"out": out.detach(), "grads": None if grad is None else tuple(x.grad for x in shard), "stats": stats}


DEMO = {"window": (4, 2), "dilation": (1, 2), "batch": 2, "heads": 2, "head_dim": 3, "value_dim": 2}


def demo_lengths(world_size: int) -> list[int]:
    """The demo's shard lengths: unequal, some shorter than the window's reach (4 x 2 tokens)."""
    return [3 + 5 * r % 7 for r in range(world_size)]


def demo(device="cpu", seed: int = 0) -> dict:
    """One rank's part of the self-check, inside an initialized process group: a seeded float64
    problem (the same on every rank) with ``DEMO``'s sizes, window and per-head dilations,
    shards of :func:`demo_lengths` and some padding keys; this rank's shard through
    :func:`sequence_parallel_attention`, forward and backward, against the single-device
    :func:`~swa_tutorial.sliding_window_attention` on the whole sequence. Returns this rank's
    report: its tokens, the largest difference (output and gradients), the bytes it sent and
    what :func:`halo_bytes` predicts."""
    rank, world = dist.get_rank(), dist.get_world_size()
    lengths, (batch, heads, d, d_v) = demo_lengths(world), (DEMO[k] for k in ("batch", "heads", "head_dim", "value_dim"))
    starts, window, dilation = shard_starts(lengths), DEMO["window"], DEMO["dilation"]
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, starts[-1], heads, d)] * 2 + [(batch, starts[-1], heads, d_v)] * 2
    q, k, v, grad = (torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes)
    padding = torch.zeros(batch, starts[-1], dtype=torch.bool, device=device)
    padding[0, 2], padding[-1, -3:] = True, True
    whole = [x.clone().requires_grad_() for x in (q, k, v)]  # one process: the whole sequence
    expected = sliding_window_attention(*whole, window, key_padding_mask=padding, dilation=dilation)
    expected.backward(grad)
    got = attend_shards(q, k, v, window, lengths, grad=grad, key_padding_mask=padding, dilation=dilation)
    mine = slice(starts[rank], starts[rank + 1])
    pairs = [(got["out"], expected.detach()[:, mine])] + [(g, w.grad[:, mine]) for g, w in zip(got["grads"], whole)]
    sizes = {"heads": heads, "head_dim": d, "value_dim": d_v, "batch": batch, "itemsize": 8}
    return {
        "rank": rank,
        "tokens": (starts[rank], starts[rank + 1]),
        "error": max(float((a - b).abs().max()) for a, b in pairs if a.numel()),
        **got["stats"],
        "model_forward_bytes": halo_bytes(lengths, window, dilation=dilation, padding=True, **sizes)[rank],
        "model_backward_bytes": halo_bytes(lengths, window, dilation=dilation, backward=True, **sizes)[rank],
        "sends_to": sorted({t.dst for t in halo_plan(lengths, window, dilation) if t.src == rank}),
    }


def report(reports: list[dict]) -> str:
    """The demo's reports (one per rank) as a table."""
    lines = [f"{'rank':>4} {'positions':>9} {'sends to':>10} {'bytes fwd':>10} {'bytes bwd':>10} {'= model':>8} "
             f"{'max |diff|':>10}"]
    for r in reports:
        matches = r["forward_bytes"] == r["model_forward_bytes"] and r["backward_bytes"] == r["model_backward_bytes"]
        lines.append(f"{r['rank']:>4} {r['tokens'][0]:>4}..{r['tokens'][1] - 1:<3} "
                     f"{','.join(map(str, r['sends_to'])) or '-':>10} {r['forward_bytes']:>10} "
                     f"{r['backward_bytes']:>10} {str(matches):>8} {r['error']:>10.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``torchrun --nproc-per-node 4 -m swa_tutorial.distributed``, or without torchrun
    ``python -m swa_tutorial.distributed --world-size 4`` (local gloo processes)."""
    parser = argparse.ArgumentParser(prog="python -m swa_tutorial.distributed", description=main.__doc__)
    parser.add_argument("--world-size", type=int, default=4, help="processes to start without torchrun")
    parser.add_argument("--backend", choices=("gloo", "nccl"), help="under torchrun; default nccl with CUDA")
    args = parser.parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        reports = [None] * dist.get_world_size()
        dist.all_gather_object(reports, demo(device))
        dist.destroy_process_group()
        if int(os.environ["RANK"]) != 0:
            return 0 if max(r["error"] for r in reports) < 1e-12 else 1
    else:
        backend = "gloo"
        reports = run_gloo(demo, args.world_size)
    print(f"sequence-parallel sliding-window attention, {len(reports)} rank(s) ({backend}): window "
          f"{DEMO['window']}, dilation {DEMO['dilation']}, float64, checked against one process")
    print(report(reports))
    ok = max(r["error"] for r in reports) < 1e-12 and all(
        r["forward_bytes"] == r["model_forward_bytes"] and r["backward_bytes"] == r["model_backward_bytes"]
        for r in reports)
    print("outputs and gradients equal the single-device function's; bytes equal halo_bytes" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
