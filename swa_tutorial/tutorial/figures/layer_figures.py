"""The whole-layer chapter's figure of a stored band-layouts run (``swa_tutorial.bench.band_layouts``)."""

from __future__ import annotations

from swa_tutorial.core.optional import require

require("numpy", by=__name__, extra="plot")

import numpy as np

LAYOUT_COLORS = {"gathered": "#9a9a9a", "3w blocks": "#2ca02c", "2w chunks": "#4c8fd0"}


def draw_layout_rates(ax, run: dict) -> None:
    """Useful GFLOP/s of each layout against the window w: the median over the rounds, the IQR shaded.

    ``run`` is the JSON document ``python -m swa_tutorial.bench.band_layouts -o ...`` writes.
    """
    config = run["config"]
    windows = config["windows"]
    for name, color in LAYOUT_COLORS.items():
        rows = [r for r in run["results"] if r["layout"] == name]  # one per window, in order
        rates = [[r["useful_flops"] / t / 1e9 for t in r["times_s"]] for r in rows]
        q1, median, q3 = np.percentile(rates, [25, 50, 75], axis=1)
        ax.plot(windows, median, "o-", color=color, label=name)
        ax.fill_between(windows, q1, q3, color=color, alpha=0.25)
    ax.set_xscale("log", base=2)
    ax.set_xticks(windows, [str(w) for w in windows])
    ax.minorticks_off()
    ax.tick_params(labelsize=11)
    ax.set_xlabel("window w", fontsize=11)
    ax.set_ylabel("useful GFLOP/s", fontsize=11)
    ax.set_ylim(0, None)
    ax.set_title(f"the band of scores, BH = {config['BH']}, L = {config['L']}, d = {config['d']}, "
                 f"{config['dtype']}, {config['threads']} thread (median, IQR)", fontsize=11)
    ax.legend(fontsize=10, frameon=False)
