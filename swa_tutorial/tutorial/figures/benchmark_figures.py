"""The figures of the benchmarks chapter: a quantity against the sequence length, and the crossover.

Each figure is drawn from committed runs (see :mod:`swa_tutorial.tutorial.benchmark_report`) and
comes with its provenance as text, printed under it. An implementation has one colour and line
style in every figure; a legend names each line once.
"""

from __future__ import annotations

import textwrap

from swa_tutorial.core.optional import require

require("matplotlib", by=__name__, extra="plot")

import matplotlib.pyplot as plt
from matplotlib.ticker import NullLocator

from swa_tutorial.bench import compare
from swa_tutorial.tutorial.benchmark_report import WIDTH, by_impl, caption, tick

STYLE = {"dense_sdpa": "s-", "dense_sdpa_nomask": "s:", "loop": "x:", "swa": "o-", "swa_compiled": "o--",
         "flex": "^-", "hf_longformer": "d-", "tiles": "v-", "triton": "v--"}
COLOR = {impl: f"C{n}" for n, impl in enumerate(STYLE)}  # the same in every figure
FONTS = {"font.size": 10, "axes.titlesize": 10, "legend.fontsize": 9, "xtick.labelsize": 9,
         "ytick.labelsize": 9}


def series(run: dict, dtype: str, mode: str, key: str) -> dict:
    """impl -> ([L], [value of ``key``]) over the configurations of a run that ran (status ok)."""
    out: dict = {}
    for r in run["results"]:
        if (r["dtype"], r["mode"], r["status"]) == (dtype, mode, "ok") and r.get(key) is not None:
            xs, ys = out.setdefault(r["impl"], ([], []))
            xs.append(r["L"])
            ys.append(r[key])
    return out


def _length_axis(ax, lengths):
    ax.set(xscale="log", yscale="log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(lengths, [tick(L) for L in lengths])
    ax.grid(True, which="both", alpha=0.3)


def against_length(title: str, panels, key: str, ylabel: str, *, scale: float = 1.0, peak_line: bool = False,
                   extra=None) -> str:
    """One figure of side-by-side log-log panels of ``key`` (times ``scale``) against L, shown.

    ``panels``: [(panel title, run, dtype, mode)]. ``peak_line``: the run's matrix-product peak as
    a grey line. ``extra``: (run, impl, note) adds that implementation from another run to every
    panel whose run is on the CPU (drawn in its own style). Returns the provenance of every
    panel, one paragraph per distinct source, to print under the figure.
    """
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(1, len(panels), figsize=(7.2, 3.5), squeeze=False)
        legend = {}
        for ax, (name, run, dtype, mode) in zip(axes[0], panels):
            lines = series(run, dtype, mode, key)
            if extra and run["config"]["device"] == "cpu":
                other, impl, _ = extra
                lines[impl] = series(other, dtype, mode, key)[impl]
            for impl, (xs, ys) in lines.items():
                legend[impl], = ax.plot(xs, [y * scale for y in ys], STYLE[impl], color=COLOR[impl])
            if peak_line:
                peak = run["peak"][dtype]
                legend[f"peak ({peak['n']}$^3$ matmul)"] = ax.axhline(peak["flops_per_s"] * scale, color="gray",
                                                                       lw=1)
            _length_axis(ax, sorted({x for xs, _ in lines.values() for x in xs}))
            ax.set(title=name, xlabel="sequence length L (K = 1024)")
        axes[0, 0].set_ylabel(ylabel)
        fig.suptitle(title)
        fig.tight_layout()
        fig.legend(legend.values(), legend.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
                   frameon=False)
        plt.show()
    sources: dict[str, list[str]] = {}
    for name, run, _, _ in panels:
        sources.setdefault(caption(run), []).append(name[:3])
    if extra and any(run["config"]["device"] == "cpu" for _, run, _, _ in panels):
        other, impl, note = extra
        sources.setdefault(f"{caption(other)} ({impl})", []).append(note)
    return "\n".join(textwrap.fill(f"{' '.join(names)} {text}", WIDTH) for text, names in sources.items())


def crossover_figure(cpu_runs: list[dict], gpu_runs: list[dict]) -> None:
    """Dense SDPA's time over the chunked path's against L, with the range the quartiles allow, and
    the ratio of their operation counts 2 L^2 / (7 w L - 4 w^2) dashed: one line per CPU run (a
    window each) in panel (a), one per dtype of the GPU in panel (b). Shown."""
    with plt.rc_context(FONTS):
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.8))
        for ax, group, name in zip(axes, (cpu_runs, gpu_runs), ("(a) CPU, float32", "(b) H200")):
            for run in group:
                cfg, dtype = run["config"], run["config"]["dtypes"][0]
                res, w = by_impl(run, dtype), cfg["window"]
                Ls = [L for L in cfg["lengths"]
                      if res.get(("swa", L), {}).get("status") == res.get(("dense_sdpa", L), {}).get("status") == "ok"]
                c = [compare(res["dense_sdpa", L]["times_s"], res["swa", L]["times_s"]) for L in Ls]
                label = f"w = {w}" if cfg["device"] == "cpu" else dtype
                if sum(r["config"]["window"] == w for r in group) > 1 and cfg["device"] == "cpu":
                    label += f", {run['provenance']['date_utc'][:10]}"  # two runs of one window
                bars = [[x["ratio"] - x["low"] for x in c], [x["high"] - x["ratio"] for x in c]]
                line = ax.errorbar(Ls, [x["ratio"] for x in c], yerr=bars, fmt="o-", ms=4, capsize=2, label=label)
                ax.plot(Ls, [2 * L**2 / (7 * w * L - 4 * w**2) for L in Ls], "--", color=line[0].get_color(), lw=1)
            ax.axhline(1, color="gray", lw=1)
            _length_axis(ax, sorted({L for run in group for L in run["config"]["lengths"]}))
            ax.tick_params(axis="x", labelrotation=90)
            ax.set(title=name, xlabel="sequence length L (K = 1024)")
            ax.legend(loc="upper left")
        axes[0].set_ylabel("dense SDPA time / chunked time")
        fig.suptitle("The chunked algorithm wins above 1 (dashed: operation counts)")
        fig.tight_layout()
        plt.show()
