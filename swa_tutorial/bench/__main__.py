"""Command line: ``python -m swa_tutorial.bench [options]``; ``--help`` lists them."""

from __future__ import annotations

import argparse
import sys

from .implementations import IMPLEMENTATIONS
from .sweep import DTYPES, MODES, child_main, sweep, table


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m swa_tutorial.bench",
        description="Time, peak memory and useful FLOP/s of sliding-window attention implementations "
        "against the sequence length L, each checked against float64 dense attention first.",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES), dest="dtypes")
    p.add_argument("--mode", nargs="+", default=["fwd"], choices=MODES, dest="modes", help="forward, or forward + backward")
    p.add_argument("--lengths", "-L", nargs="+", type=int, default=[1024, 2048, 4096], help="sequence lengths L")
    p.add_argument("--window", "-w", type=int, default=256, help="one-sided window w (default 256)")
    p.add_argument("-B", type=int, default=1, help="batch size (default 1)")
    p.add_argument("-H", type=int, default=12, help="heads (default 12)")
    p.add_argument("-d", type=int, default=64, help="head dim (default 64)")
    p.add_argument("--impls", nargs="+", default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per configuration, at least")
    p.add_argument("--min-reps", type=int, default=3, help="timed repetitions per configuration, at least")
    p.add_argument("--loop-max-len", type=int, default=4096, help="the loop runs only up to this L")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true", help="do not isolate CPU configurations in processes")
    p.add_argument("--memory-fraction", type=float, default=0.75, help="CPU memory cap per process, of what is available")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; later configurations are skipped")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", "-o", default=None, help="JSON file for the results (written after every configuration)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one isolated configuration (internal)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    progress = None
    if not args.no_progress:
        try:
            from tqdm import tqdm
        except ImportError:
            sys.exit("the progress bar needs tqdm: pip install 'swa-tutorial[bench]', or pass --no-progress")
        progress = lambda configs: tqdm(configs, desc="configurations", unit="config")  # noqa: E731
    doc = sweep(
        device=args.device, dtypes=args.dtypes, modes=args.modes, lengths=args.lengths, impls=args.impls,
        B=args.B, H=args.H, d=args.d, window=args.window, threads=args.threads, min_time=args.min_time,
        min_reps=args.min_reps, loop_max_len=args.loop_max_len, seed=args.seed,
        isolate=False if args.in_process else None, memory_fraction=args.memory_fraction,
        time_budget_s=args.time_budget, out=args.out, commit=args.commit, progress=progress,
    )
    print(table(doc))
    if args.out:
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
