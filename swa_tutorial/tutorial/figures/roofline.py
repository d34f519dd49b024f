"""The roofline of the tiles chapter: each benchmark timing at the arithmetic intensity of the code timed.

A point is one configuration of a committed benchmark file (see :mod:`swa_tutorial.bench`): its
useful rate, 4 N d B H FLOPs over the median time (and over the first and third quartiles of the
times, for its bar), at an intensity of useful FLOPs per byte moved. How the bytes were found
differs, and the figure draws it apart:

* **counted** (filled markers): every operator's inputs and outputs, counted by
  :func:`swa_tutorial.tutorial.traffic.count_traffic`. The chunks ("swa") as the package was at
  the commit the benchmark file records (``tools/traffic_history.py`` counted them into
  ``book/data/chunks-traffic.json``); the PyTorch tiles ("tiles") as the package is today.
* **modelled** (hollow markers): FlexAttention ("flex"), a fused kernel whose traffic is
  :func:`~swa_tutorial.tutorial.traffic.fused_traffic` with its block mask's 128 x 128 tiles and
  no reuse of a key tile between query tiles.
* **inferred** (hollow markers): dense SDPA ("dense_sdpa"), a fused kernel reading q, k, v and
  an L x L bias of the input's dtype, writing the output; the files do not say which kernel ran.

The package's Triton kernel ("triton") is timed by its own benchmark,
``python -m swa_tutorial.bench.kernel_timing``, in files of another schema: :func:`kernel_points`
places its forward timings at its modelled intensity (its own tiles, no reuse).
"""

from __future__ import annotations

from dataclasses import dataclass

from swa_tutorial.core.optional import require

require("matplotlib", "numpy", by=__name__, extra="plot")

import numpy as np
import torch
from matplotlib.lines import Line2D

from swa_tutorial.bench.measure import quartiles, useful_flops
from swa_tutorial.tutorial.traffic import fused_traffic

# How the bytes of each implementation are found, and how it is drawn: colour, marker, name.
SOURCE = {"swa": "counted", "tiles": "counted", "flex": "modelled", "dense_sdpa": "inferred",
          "triton": "modelled"}
STYLE = {"swa": ("#1f77b4", "o", "chunks"),
         "tiles": ("#ff7f0e", "D", "tiles (PyTorch)"),
         "flex": ("#2ca02c", "s", "FlexAttention"),
         "dense_sdpa": ("#7f7f7f", "^", "dense SDPA"),
         "triton": ("#d62728", "v", "Triton kernel")}
LINES = {"bfloat16": "-", "float32": "--"}  # the dtype of a point's series
FLEX_TILE = 128  # FlexAttention's block mask: 128 x 128 blocks


@dataclass(frozen=True)
class Point:
    """One timing on the roofline: where it sits, the range of its timings, how its bytes were found."""

    impl: str
    dtype: str
    seq_len: int
    intensity: float  # useful FLOPs per byte moved
    rate: float  # useful FLOP/s at the median time
    low: float  # ... at the third quartile of the times
    high: float  # ... at the first quartile
    source: str  # "counted", "modelled" or "inferred"


def timing_range(result: dict, work: float) -> tuple[float, float, float]:
    """Useful FLOP/s at the median time, and at the third and first quartiles of the times."""
    q1, median, q3 = quartiles(result["times_s"])
    return work / median, work / q3, work / q1


def moved_bytes(run: dict, result: dict, counted: dict, tiles_counted: dict) -> float:
    """The bytes the timed call moves: counted (chunks, tiles), modelled (flex) or inferred (dense SDPA).

    ``counted`` maps (commit, impl, dtype, L) to the chunks' bytes at that commit;
    ``tiles_counted`` maps L to the tiles' bytes today.
    """
    cfg, seq_len, impl = run["config"], result["L"], result["impl"]
    itemsize = torch.empty(0, dtype=getattr(torch, result["dtype"])).element_size()
    if impl == "swa":
        commit = run["provenance"]["git_commit"].removesuffix("+uncommitted changes")
        return counted[commit, "swa", result["dtype"], seq_len]
    if impl == "tiles":
        return tiles_counted[seq_len]
    if impl == "flex":
        window = (cfg["window"], cfg["window"])
        return fused_traffic(cfg["B"], cfg["H"], seq_len, window, cfg["d"], cfg["d"], itemsize,
                             FLEX_TILE, FLEX_TILE)["tiles"]
    if impl == "dense_sdpa":  # q, k, v and the output, and the bias of each head
        return cfg["B"] * cfg["H"] * (4 * seq_len * cfg["d"] * itemsize + seq_len * seq_len * itemsize)
    raise ValueError(f"impl must be one of {', '.join(SOURCE)}, got {impl!r}")


def points(run: dict, impls, counted: dict, tiles_counted: dict) -> list[Point]:
    """The points of the implementations ``impls`` that ran (status ok) in one benchmark file."""
    cfg, out = run["config"], []
    for r in run["results"]:
        if r["impl"] in impls and r["status"] == "ok":
            work = useful_flops(cfg["B"], cfg["H"], r["L"], cfg["window"], cfg["d"], backward=False)
            rate, low, high = timing_range(r, work)
            intensity = work / moved_bytes(run, r, counted, tiles_counted)
            out.append(Point(r["impl"], r["dtype"], r["L"], intensity, rate, low, high, SOURCE[r["impl"]]))
    return out


def kernel_points(run: dict, tile: int) -> list[Point]:
    """The forward timings of the Triton kernel in a kernel_timing file, at the intensity
    :func:`~swa_tutorial.tutorial.traffic.fused_traffic` models for ``tile`` x ``tile`` tiles."""
    shape, out = run["shape"], []
    if shape["H_kv"] != shape["H"]:
        raise ValueError(f"run must have H_kv = H (the traffic model's), got {shape}")
    itemsize = torch.empty(0, dtype=getattr(torch, run["dtype"])).element_size()
    for row in run["results"]:
        timed = row["implementations"]["triton"]
        if row["mode"] == "fwd" and "times_s" in timed:
            work, L = row["useful_flops"], row["seq_len"]
            rate, low, high = timing_range(timed, work)
            moved = fused_traffic(shape["B"], shape["H"], L, tuple(shape["window"]), shape["d"],
                                  shape["d"], itemsize, tile, tile)["tiles"]
            out.append(Point("triton", run["dtype"], L, work / moved, rate, low, high, SOURCE["triton"]))
    return out


def roof(beta: float, peak: float, intensity):
    """The roof min(peak, beta * intensity): the fastest a computation of that intensity can run."""
    return np.minimum(peak, beta * np.asarray(intensity, dtype=float))


def draw_roofline(ax, beta: float, peaks: dict, pts: list[Point], title: str, *, ring: int = 16384,
                  xlim=(0.1, 3000)):
    """The roofs (one per dtype of ``peaks``, bytes at ``beta``/s) and the points, on log-log axes.

    A series is one implementation in one dtype: its colour and marker name the implementation,
    its line the dtype (solid bfloat16, dashed float32), a filled marker bytes counted op by op
    and a hollow one bytes modelled or inferred. The points at L = ``ring`` are ringed.
    Returns the legend's handles, for the caller to place.
    """
    xs = np.logspace(np.log10(xlim[0]), np.log10(xlim[1]), 200)
    handles = []
    for dtype, peak in peaks.items():
        handles += ax.plot(xs, roof(beta, peak, xs), color="black", lw=1.4, ls=LINES[dtype],
                           label=f"roof, {dtype}")
    for impl, dtype in sorted({(p.impl, p.dtype) for p in pts}):
        series = sorted((p for p in pts if (p.impl, p.dtype) == (impl, dtype)), key=lambda p: p.seq_len)
        color, marker, name = STYLE[impl]
        face = color if SOURCE[impl] == "counted" else "white"
        x, y = [p.intensity for p in series], [p.rate for p in series]
        ax.plot(x, y, color=color, lw=1, ls=LINES[dtype], alpha=0.7)
        ax.errorbar(x, y, yerr=[[p.rate - p.low for p in series], [p.high - p.rate for p in series]],
                    fmt="none", ecolor=color, lw=1)
        ax.plot(x, y, marker, color=color, mfc=face, mec=color, ms=7, mew=1.4, ls="none")
        ringed = [p for p in series if p.seq_len == ring]
        ax.plot([p.intensity for p in ringed], [p.rate for p in ringed], "o", mfc="none", mec="black",
                ms=14, mew=1)
        handles.append(Line2D([], [], color=color, marker=marker, mfc=face, mec=color, ms=7, mew=1.4,
                              ls=LINES[dtype], label=f"{name}, {dtype} ({SOURCE[impl]})"))
    ax.set(xscale="log", yscale="log", xlim=xlim, title=title, xlabel="useful FLOP per byte moved",
           ylabel="useful FLOP/s")
    ax.grid(True, which="major", alpha=0.3)
    return handles


def source_legend() -> list[Line2D]:
    """Two legend entries that say what a filled and a hollow marker mean."""
    return [Line2D([], [], marker="o", color="black", mfc="black", ls="none", ms=7,
                   label="filled: bytes counted op by op"),
            Line2D([], [], marker="o", color="black", mfc="white", ls="none", ms=7,
                   label="hollow: bytes modelled or inferred")]
