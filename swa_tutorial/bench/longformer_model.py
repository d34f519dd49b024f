"""A Hugging Face Longformer before and after ``patch_hf_longformer``: forward time and peak memory.

    python -m swa_tutorial.bench.longformer_model [--seq-len 4096] [--layers 2] [--threads 2]
        [--out book/data/cpu-longformer-model.json]

Both models are built from the same ``LongformerConfig`` (the shape of longformer-base-4096:
hidden 768, 12 heads, intermediate 3072, ``attention_window`` 512, random weights, no download;
``--layers`` of them) and run the same input: one sequence of L tokens, the first one global (a
classifier's [CLS]), in eval mode without gradients.

* Time: one process holds both models, checks that their outputs agree (which also warms them
  up), then times single forwards in alternation at the given thread count
  (``time.perf_counter``; ``torch.utils.benchmark``'s ``timeit`` would add two untimed warm-up
  calls to each), so that a change of machine load reaches both alike: each pair of
  neighbouring runs gives one ratio.
  The process's CPU time of each forward is kept too: on a machine shared with other work it
  varies less than the wall-clock time (a busy core delays, it does not add CPU time).
* Memory: each model in fresh processes (``--rounds`` each, alternating), so that a peak is
  its own: build, one forward, then one more under a peak-memory probe (the increment of the
  process's peak resident memory).

The JSON holds every repetition, the ratios and the provenance.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from swa_tutorial.bench.measure import PeakMemory, summarize
from swa_tutorial.bench.sweeps import provenance, write
from swa_tutorial.core.optional import require

SCHEMA = "swa-tutorial-longformer-model/1"
MODELS = ("original", "patched")


def build(model: str, spec: dict):
    """The Longformer of ``spec`` (random weights from seed 0), patched or not, in eval mode."""
    require("transformers", by=f"{__name__}.build")
    from transformers import LongformerConfig, LongformerModel
    from transformers.utils import logging

    from swa_tutorial.integrations.longformer import patch_hf_longformer

    logging.set_verbosity_error()  # no "padded to a multiple of the window" notices in the output
    torch.manual_seed(0)
    config = LongformerConfig(
        hidden_size=spec["hidden"], num_attention_heads=spec["heads"], intermediate_size=4 * spec["hidden"],
        num_hidden_layers=spec["layers"], attention_window=spec["window"],
        max_position_embeddings=spec["seq_len"] + 2,
    )
    original = LongformerModel(config).eval()
    return patch_hf_longformer(copy.deepcopy(original)) if model == "patched" else original


def inputs(spec: dict) -> dict:
    """One sequence of L random token ids; the first token global."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 1000, (spec["batch"], spec["seq_len"]), generator=g)
    global_mask = torch.zeros_like(ids)
    global_mask[:, : spec["globals"]] = 1
    return dict(input_ids=ids, global_attention_mask=global_mask)


def forward(net, kwargs) -> torch.Tensor:
    """The model's last hidden state [B, L, E], without gradients."""
    with torch.no_grad():
        return net(**kwargs).last_hidden_state


def timing(spec: dict) -> dict:
    """Both models in this process: outputs compared, then forwards timed in alternation."""
    torch.set_num_threads(spec["threads"])
    models, kwargs = {name: build(name, spec) for name in MODELS}, inputs(spec)
    expected, actual = (forward(models[name], kwargs) for name in MODELS)  # also the warm-up
    difference = (actual - expected).abs().max().item()
    if not difference <= 1e-4 * max(1.0, expected.abs().max().item()):
        raise AssertionError(f"the patched model's output differs from the original's by {difference}")
    times, cpu_times = {name: [] for name in MODELS}, {name: [] for name in MODELS}
    for r in range(spec["reps"]):
        for name in MODELS if r % 2 == 0 else MODELS[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            forward(models[name], kwargs)
            times[name].append(time.perf_counter() - wall)
            cpu_times[name].append(time.process_time() - cpu)
            print(f"run {r + 1}/{spec['reps']} {name}: {times[name][-1]:.2f} s, CPU {cpu_times[name][-1]:.2f} s",
                  file=sys.stderr, flush=True)
    return {"max_abs_difference": difference, "times_s": times, "cpu_times_s": cpu_times}


def peak_memory(model: str, spec: dict) -> int:
    """In a fresh process: build, one forward, then the peak memory of one more (bytes)."""
    torch.set_num_threads(spec["threads"])
    net, kwargs = build(model, spec), inputs(spec)
    forward(net, kwargs)
    with PeakMemory("cpu") as peak:
        forward(net, kwargs)
    return peak.bytes


def run(spec: dict) -> dict:
    """The timing run, then each model's peak memory in ``rounds`` fresh processes."""
    result = timing(spec)
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    peaks = {name: [] for name in MODELS}
    for r in range(spec["rounds"]):
        for name in MODELS if r % 2 == 0 else MODELS[::-1]:
            proc = subprocess.run(
                [sys.executable, "-m", "swa_tutorial.bench.longformer_model", "--memory-of", name,
                 "--spec", json.dumps(spec)],
                env=env, capture_output=True, text=True,
            )
            if proc.returncode:
                raise RuntimeError(f"the {name} model's memory process failed:\n{proc.stderr[-2000:]}")
            peaks[name].append(int(proc.stdout.strip().splitlines()[-1]))
    results = {
        name: {**summarize(result["times_s"][name]), "cpu": summarize(result["cpu_times_s"][name]),
               "peak_bytes": statistics.median(peaks[name]), "peak_bytes_per_process": peaks[name]}
        for name in MODELS
    }
    return {
        "ratio_patched_to_original": pair_ratios(result["times_s"]),
        "cpu_ratio_patched_to_original": pair_ratios(result["cpu_times_s"]),
        "max_abs_difference": result["max_abs_difference"],
        "results": results,
    }


def pair_ratios(times: dict) -> dict:
    """patched / original for each pair of neighbouring runs: median, IQR, every ratio."""
    ratios = [p / o for o, p in zip(times["original"], times["patched"])]
    summary = summarize(ratios)
    return {"median": summary["median_s"], "iqr": summary["iqr_s"], "per_pair": ratios}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.longformer_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--window", type=int, default=512, help="Hugging Face's attention_window (both sides)")
    parser.add_argument("--globals", type=int, default=1, help="how many tokens, from the first, are global")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=8, help="timed forwards of each model")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per model for the peak memory")
    parser.add_argument("--out", help="write the results as JSON here (e.g. book/data/cpu-longformer-model.json)")
    parser.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        print(peak_memory(args.memory_of, json.loads(args.spec)), flush=True)
        return
    spec = {name: getattr(args, name) for name in
            ("seq_len", "layers", "hidden", "heads", "window", "globals", "batch", "threads", "rounds", "reps")}
    doc = {
        "schema": SCHEMA,
        "provenance": provenance(torch.device("cpu"), args.threads, None),
        "config": {**spec, "dtype": "float32", "mode": "forward, torch.no_grad(), eval()"},
    }
    doc.update(run(spec))
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    for model in MODELS:
        r = doc["results"][model]
        print(f"{model:>9}: median {r['median_s']:.3f} s (IQR {r['iqr_s']:.3f} s, {len(r['times_s'])} runs), "
              f"peak memory {r['peak_bytes'] / 2**20:.0f} MiB")
    for what in ("", "cpu_"):
        ratio = doc[f"{what}ratio_patched_to_original"]
        print(f"patched / original {'CPU ' if what else ''}time, pair by pair: median {ratio['median']:.3f} "
              f"(IQR {ratio['iqr']:.3f})")
    print(f"max |difference| of the outputs: {doc['max_abs_difference']:.2e}")
    if args.out:
        write(doc, args.out)


if __name__ == "__main__":
    main()
