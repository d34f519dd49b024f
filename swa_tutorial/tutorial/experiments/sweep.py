"""The receptive-field sweep: train every configuration, probe it at many distances, write JSON.

    python -m swa_tutorial.tutorial.experiments.sweep -o book/data/receptive-field.json

The grid (:func:`grid`): layers in {1, 2, 4} x window w in {8, 16, 32} without dilation or
global token; dilation 2 on half the heads, and each kind of global token, on a subset; 2 seeds
each. Every model is probed at the distances of :func:`distances`, both sides of each boundary
the theory predicts (:mod:`.reach`). One row per (model, distance); ``seconds`` and
``cpu_seconds`` are the training time of the row's model (wall clock, and the process's CPU
time, the steadier on a shared machine), ``steps`` its optimiser steps.
"""

from __future__ import annotations

from . import records
from .reach import covered, reachable_distances
from .task import Task
from .training import Run, accuracy, train

SCHEMA = "swa-tutorial-receptive-field/1"
HALF_DILATED = (1, 1, 2, 2)  # four heads: two ordinary, two with dilation 2
# distances every model is probed at, besides those next to its own boundaries
COMMON_DISTANCES = (1, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 254)


def grid(seeds=(0, 1), steps: int = 400) -> list[Run]:
    """The sweep's runs, cheapest first within each group (the order they are trained in)."""
    runs = [Run(n, w, seed=s, steps=steps) for s in seeds for n in (1, 2, 4) for w in (8, 16, 32)]
    runs += [Run(n, 8, HALF_DILATED, seed=s, steps=steps) for s in seeds for n in (1, 2, 4)]
    runs += [Run(n, 8, global_token="last", seed=s, steps=steps) for s in seeds for n in (1, 2)]
    runs += [Run(2, 8, global_token="first", seed=s, steps=steps) for s in seeds]
    return runs


def boundaries(run: Run) -> list[int]:
    """The distances where the theory says accuracy changes: layers x w, the gap-free reach and the
    farthest reach (the last two differ with dilation)."""
    windows, dilations = [run.window] * run.layers, [run.dilation] * run.layers
    return sorted({run.layers * run.window, covered(windows, dilations), run.farthest()})


def distances(run: Run, task: Task) -> list[int]:
    """The distances to probe: ``COMMON_DISTANCES`` and B - 1 .. B + 2 for each boundary B."""
    near = {b + k for b in boundaries(run) for k in (-1, 0, 1, 2)}
    return sorted(d for d in set(COMMON_DISTANCES) | near if 1 <= d <= task.max_distance)


def reachable(run: Run, distance: int) -> bool:
    """Whether the last token can see the mark ``distance`` back: always with a global last
    token, else by the receptive field (a global first token carries nothing, :mod:`.model`)."""
    if run.global_token == "last":
        return True
    return distance in set(reachable_distances([run.window] * run.layers, [run.dilation] * run.layers))


def probe_length(run: Run, task: Task, trained_len: int, distance: int) -> int:
    """The probe's sequence length: the task's for a global last token (its row sees every key);
    else the training length, or distance + 2 if longer. Without a global last token the last
    output depends only on the tokens within the farthest reach (and on BOS, the same in every
    sequence), so a longer probe would ask the model nothing more."""
    if run.global_token == "last":
        return task.seq_len
    return max(trained_len, distance + 2)


def measure(run: Run, task: Task, examples: int) -> list[dict]:
    """Train ``run`` and probe it at each of its distances: one row per distance."""
    trained = train(run, task)
    rows = []
    for distance in distances(run, task):
        probe_task = Task(values=task.values, seq_len=probe_length(run, task, trained.seq_len, distance))
        rows.append({
            "layers": run.layers,
            "window": run.window,
            "dilation": run.describe()["dilation"],
            "global": run.global_token is not None,
            "global_token": run.global_token,
            "distance": distance,
            "seed": run.seed,
            "accuracy": accuracy(trained.model, probe_task, distance, examples, run.seed),
            "examples": examples,
            "reachable": reachable(run, distance),
            "steps": run.steps,
            "seconds": round(trained.seconds, 2),
            "cpu_seconds": round(trained.cpu_seconds, 2),
            "train_len": trained.seq_len,
            "final_loss": round(trained.losses[-1], 4),
        })
    return rows


def describe(run: Run) -> str:
    extra = f", dilation {run.dilation}" if run.dilation != 1 else ""
    extra += f", global {run.global_token}" if run.global_token else ""
    return f"layers={run.layers} w={run.window}{extra} seed {run.seed}"


def main(argv=None) -> None:
    module = "swa_tutorial.tutorial.experiments.sweep"
    parser = records.parser(module, __doc__, steps=400)
    parser.add_argument("--examples", type=int, default=128, help="held-out probes per distance (default 128)")
    args = parser.parse_args(argv)
    task, runs = Task(), grid(args.seeds, args.steps)
    result = records.header(SCHEMA, module, args.threads)
    result["task"] = {"values": task.values, "seq_len": task.seq_len, "chance": task.chance}
    result["training"] = {key: value for key, value in runs[0].describe().items()
                          if key not in ("layers", "window", "dilation", "global_token", "seed")}
    result["rows"] = []
    records.collect(result, runs, describe, lambda run: measure(run, task, args.examples), args.output)


if __name__ == "__main__":
    main()
