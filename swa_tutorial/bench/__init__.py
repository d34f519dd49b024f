"""Benchmarks of sliding-window attention: ``python -m swa_tutorial.bench --help``.

Each implementation of ``IMPLEMENTATIONS`` (dense SDPA with and without a band mask, the loop,
the package's backends chunks (eager and compiled), tiles and triton, FlexAttention, Hugging
Face's Longformer chunk functions) is checked against float64 dense attention, then timed and
its peak memory measured, for every sequence length L asked for. The results, with the hardware
and software they came from, go to one JSON file per run (the book's benchmark chapter plots
the committed ones).
"""

from swa_tutorial.bench.correctness import check, query_slices
from swa_tutorial.bench.implementations import IMPLEMENTATIONS
from swa_tutorial.bench.measure import band_pairs, compare, useful_flops
from swa_tutorial.bench.sweeps import sweep, table, write

__all__ = ["IMPLEMENTATIONS", "band_pairs", "check", "compare", "query_slices", "sweep", "table", "useful_flops", "write"]
