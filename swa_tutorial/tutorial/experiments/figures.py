"""The chapter's figures and tables, drawn from the stored results (``book/data``).

:func:`curves` groups the sweep's rows by configuration and distance (mean, min and max over the
seeds); :func:`summary` says, per configuration, how the accuracy splits where the theory says
the mark is reachable, in a gap of a dilated stack, and beyond the farthest reach. The plots draw
the same numbers: accuracy against distance on a log2 axis, the seeds' spread as a band, the
boundaries the theory predicts as dashed lines, the chance level dotted.
"""

from __future__ import annotations

from collections import defaultdict

from swa_tutorial.core.optional import require

require("matplotlib", "numpy", by=__name__, extra="plot")

import matplotlib.pyplot as plt
import numpy as np

from .reach import covered, farthest

WINDOW_COLORS = {8: "C0", 16: "C1", 32: "C2"}


def _dilation_key(dilation):
    return tuple(dilation) if isinstance(dilation, list) else dilation


def _config(row) -> tuple:
    """(layers, window, dilation, global_token) of a row."""
    return row["layers"], row["window"], _dilation_key(row["dilation"]), row["global_token"]


def curves(result: dict) -> dict:
    """{(layers, window, dilation, global_token): (distances, mean, low, high)} as arrays, the
    accuracy's mean, minimum and maximum over the seeds at each distance."""
    grouped = defaultdict(lambda: defaultdict(list))
    for row in result["rows"]:
        grouped[_config(row)][row["distance"]].append(row["accuracy"])
    out = {}
    for config, by_distance in grouped.items():
        distances = np.array(sorted(by_distance))
        values = [by_distance[d] for d in distances]
        out[config] = (distances, np.array([np.mean(v) for v in values]),
                       np.array([min(v) for v in values]), np.array([max(v) for v in values]))
    return out


def reach_of(config: tuple) -> tuple[int, int]:
    """(gap-free reach, farthest reach) of a configuration's windows, global token aside."""
    layers, window, dilation, _ = config
    windows, dilations = [window] * layers, [list(dilation) if isinstance(dilation, tuple) else dilation] * layers
    return covered(windows, dilations), farthest(windows, dilations)


def summary(result: dict) -> list[dict]:
    """Per configuration: its reach and the accuracy over all seeds where the mark is reachable
    (min and mean), in the gaps below the farthest reach (max) and beyond it (mean and max)."""
    groups = defaultdict(lambda: defaultdict(list))
    for row in result["rows"]:
        config = _config(row)
        far = reach_of(config)[1]
        kind = "reachable" if row["reachable"] else "gap" if row["distance"] <= far else "beyond"
        groups[config][kind].append(row["accuracy"])
    table = []
    for config, kinds in groups.items():
        gap_free, far = reach_of(config)
        entry = {"layers": config[0], "window": config[1], "dilation": config[2], "global_token": config[3],
                 "covered": gap_free, "farthest": far}
        for kind in ("reachable", "gap", "beyond"):
            values = kinds.get(kind, [])
            entry[kind] = (min(values), float(np.mean(values)), max(values)) if values else None
        table.append(entry)
    return table


def format_summary(table: list[dict]) -> str:
    """The summary as fixed-width text, one configuration per line (80 characters at most)."""
    def span(values, which):
        return "   -  " if values is None else f"{values[which]:6.2f}"

    lines = [f"{'|':>37}{'reachable':>13}  |{'gap':>6}  |{'beyond':>11}",
             f"layers   w  dilation  global {'reach':>6} |{'min':>7}{'mean':>7} |{'max':>7} |"
             f"{'mean':>7}{'max':>7}"]
    for e in table:
        dilation = "-" if e["dilation"] == 1 else ",".join(map(str, e["dilation"]))
        reach = f"{e['covered']}" if e["covered"] == e["farthest"] else f"{e['covered']}/{e['farthest']}"
        lines.append(f"{e['layers']:6d} {e['window']:3d}  {dilation:8s}  {e['global_token'] or '-':6s} {reach:>6s}"
                     f" | {span(e['reachable'], 0)} {span(e['reachable'], 1)} | {span(e['gap'], 2)}"
                     f" | {span(e['beyond'], 1)} {span(e['beyond'], 2)}")
    return "\n".join(lines)


def _axes_style(ax, chance: float, title: str, log: bool = True):
    if log:
        ax.set_xscale("log", base=2)
    ax.axhline(chance, color="0.4", linestyle=":", linewidth=1)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("distance D of the mark")
    ax.set_title(title)
    ax.grid(alpha=0.3)


def _draw(ax, config_curve, color, label, marker="o", alpha=0.2):
    distances, mean, low, high = config_curve
    ax.plot(distances, mean, marker=marker, markersize=3, color=color, label=label, linewidth=1.3)
    ax.fill_between(distances, low, high, color=color, alpha=alpha, linewidth=0)


def plot_sweep(result: dict):
    """Accuracy against distance, one panel per layer count, one line per window (no dilation, no
    global token); the seeds' min..max shaded; dashed: D = layers x w."""
    data, chance = curves(result), result["task"]["chance"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for ax, layers in zip(axes, (1, 2, 4)):
        for window, color in WINDOW_COLORS.items():
            _draw(ax, data[(layers, window, 1, None)], color, f"w = {window}")
            ax.axvline(layers * window, color=color, linestyle="--", linewidth=1)
        _axes_style(ax, chance, f"{layers} layer{'s' * (layers > 1)}")
    axes[0].set_ylabel("accuracy (seeds: min..max)")
    axes[0].legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_variants(result: dict, variants: dict, layer_counts, window: int = 8, zoom: bool = False):
    """Panels per layer count: the plain stack against each variant {label: (dilation,
    global_token)} the sweep ran at that count; dashed lines at layers x w and, for a dilated
    variant, at its gap-free and farthest reach. ``zoom``: a linear distance axis up to 1.5
    times the farthest boundary, where single distances (odd, even) can be told apart."""
    data, chance = curves(result), result["task"]["chance"]
    fig, axes = plt.subplots(1, len(layer_counts), figsize=(4 * len(layer_counts), 3.6), sharey=True, squeeze=False)
    for ax, layers in zip(axes[0], layer_counts):
        _draw(ax, data[(layers, window, 1, None)], "0.5", "plain", alpha=0.15)
        boundaries = [layers * window]
        for (label, (dilation, global_token)), color in zip(variants.items(), ("C3", "C4", "C5")):
            config = (layers, window, dilation, global_token)
            if config not in data:  # a variant the sweep ran at other layer counts only
                continue
            _draw(ax, data[config], color, label, marker="s")
            if global_token is None:  # a global token's reach is not the windows'
                for boundary in sorted(set(reach_of(config))):
                    ax.axvline(boundary, color=color, linestyle="--", linewidth=1)
                    boundaries.append(boundary)
        ax.axvline(layers * window, color="0.5", linestyle="--", linewidth=1)
        _axes_style(ax, chance, f"{layers} layer{'s' * (layers > 1)}, w = {window}", log=not zoom)
        if zoom:
            ax.set_xlim(0, 1.5 * max(boundaries))
        ax.legend(loc="lower left")
    axes[0][0].set_ylabel("accuracy (seeds: min..max)")
    fig.tight_layout()
    return fig


def plot_text(result: dict):
    """Validation bits per byte against the window: each seed a point, their mean a line."""
    rows = result["rows"]
    windows = sorted({r["window"] for r in rows})
    mean = [np.mean([r["validation_bits_per_byte"] for r in rows if r["window"] == w]) for w in windows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(windows, mean, "-", color="C0", label="mean over seeds")
    ax.plot([r["window"] for r in rows], [r["validation_bits_per_byte"] for r in rows], "o", color="C0",
            markersize=4, alpha=0.6, label="one seed")
    ax.set_xscale("log", base=2)
    ax.set_xticks(windows, [str(w) for w in windows])
    ax.set_xlabel("window: keys to the left (2 layers)")
    ax.set_ylabel("validation bits per byte")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
