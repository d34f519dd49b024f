"""Command line: ``python -m swa_tutorial.bench [options]``; ``--help`` lists them."""

from __future__ import annotations

import argparse
import os
import sys

from swa_tutorial.bench.implementations import IMPLEMENTATIONS
from swa_tutorial.bench.measure import resolve_device
from swa_tutorial.bench.sweeps import DTYPES, MODES, child_main, sweep, table

DESCRIPTION = """\
Time, peak memory and useful FLOP/s of sliding-window attention implementations against the
sequence length L. Each configuration (implementation, dtype, mode, L) is first checked against
float64 dense attention; only if it passes is it timed. The results are printed as a table; a
JSON file with every timing and the machine's provenance is written only with -o/--out.
"""

EPILOG = """\
A quick first run (a minute or less on two CPU cores):
  python -m swa_tutorial.bench -L 1024 2048 -H 4 -w 64 --impls dense_sdpa swa --min-time 0.2 --threads 1

On a machine that other work shares, give the run fewer threads than cores (--threads 1): an
operation split over all cores waits for whichever thread the system sets aside. The first call
of a compiled implementation (swa_compiled, flex) compiles, which takes tens of seconds.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m swa_tutorial.bench", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES), dest="dtypes", metavar="DTYPE",
                   help=f"one or more of {', '.join(sorted(DTYPES))} (default: float32)")
    p.add_argument("--mode", nargs="+", default=["fwd"], choices=MODES, dest="modes", metavar="MODE",
                   help="fwd (forward) and/or fwd+bwd (forward + backward) (default: fwd)")
    p.add_argument("--lengths", "-L", nargs="+", type=_positive_int, default=[1024, 2048, 4096], metavar="L",
                   help="sequence lengths (default: 1024 2048 4096)")
    p.add_argument("--window", "-w", type=_positive_int, default=256, help="one-sided window w (default: 256)")
    p.add_argument("-B", type=_positive_int, default=1, help="batch size (default: 1)")
    p.add_argument("-H", type=_positive_int, default=12, help="heads (default: 12)")
    p.add_argument("-d", type=_positive_int, default=64, help="head dim (default: 64)")
    p.add_argument("--impls", nargs="+", default=list(IMPLEMENTATIONS), choices=list(IMPLEMENTATIONS), metavar="IMPL",
                   help=f"implementations, of {', '.join(IMPLEMENTATIONS)} (default: all; those that need "
                   "a missing package or another L are listed as unsupported, with the reason)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads per operation (default: torch's, one per core)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per configuration, at least (default: 1)")
    p.add_argument("--min-reps", type=_positive_int, default=3, help="timed repetitions per configuration, at least (default: 3)")
    p.add_argument("--loop-max-len", type=int, default=4096, help="the loop runs only up to this L (default: 4096)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--in-process", action="store_true",
                   help="run CPU configurations in this process (default: each in a fresh one, for its memory)")
    p.add_argument("--memory-fraction", type=float, default=0.75,
                   help="memory cap of each CPU process, as a fraction of what is available (default: 0.75)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="configurations after this many seconds are recorded as skipped (default: no limit)")
    p.add_argument("--peak-size", type=int, default=None, metavar="N",
                   help="n of the n x n x n matrix product timed for the device's peak (default: 8192 on "
                   "CUDA, 2048 elsewhere; a smaller one for a quick trial, bfloat16 being slow on many CPUs)")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    p.add_argument("--out", "-o", default=None, metavar="FILE",
                   help="JSON file for the results, rewritten after every configuration (default: none, "
                   "the table only)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one isolated configuration (internal)
    return p.parse_args(argv)


def progress_reporter():
    """A progress(done, total, label) function for ``sweep``: a tqdm bar naming the configuration
    being run, or without tqdm one line per configuration on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        print("(no progress bar: tqdm is not installed; pip install 'swa-tutorial[bench]')", file=sys.stderr)

        def report(done, total, label):
            if label:
                print(f"[{done + 1}/{total}] {label}", file=sys.stderr, flush=True)

        return report
    bar = None

    def report(done, total, label):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="config")
        bar.update(done - bar.n)
        if label:
            bar.set_description_str(label)
        else:
            bar.close()

    return report


def busy_warning(threads: int | None) -> str | None:
    """A note when other work already keeps the CPU's cores busy, or None."""
    cores = os.cpu_count() or 1
    threads = threads or cores
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load + threads <= cores + 0.5:
        return None
    waits = " (and each operation split over several threads waits for the slowest)" if threads > 1 else ""
    return (f"note: the 1-minute load average is {load:.1f} on {cores} cores: other work is running, so the "
            f"times will include waits for a core{waits}; compare implementations within one run, "
            "medians with their IQRs")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        sys.exit(f"python -m swa_tutorial.bench: {error}")
    if device.type == "cpu" and (warning := busy_warning(args.threads)):
        print(warning, file=sys.stderr)
    doc = sweep(
        device=device, dtypes=args.dtypes, modes=args.modes, lengths=args.lengths, impls=args.impls,
        B=args.B, H=args.H, d=args.d, window=args.window, threads=args.threads, min_time=args.min_time,
        min_reps=args.min_reps, loop_max_len=args.loop_max_len, seed=args.seed,
        isolate=False if args.in_process else None, memory_fraction=args.memory_fraction,
        time_budget_s=args.time_budget, out=args.out, commit=args.commit, peak_n=args.peak_size,
        progress=None if args.no_progress else progress_reporter(),
    )
    print(table(doc))
    print(f"results written to {args.out}" if args.out else "(no JSON file written: pass -o FILE to keep the results)")


if __name__ == "__main__":
    main()
