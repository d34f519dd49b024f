"""A Hugging Face Longformer before and after ``patch_hf_longformer``: forward time and peak memory.

    python -m swa_tutorial.bench.longformer_model [--seq-len 4096] [--layers 2] [--threads 2]
        [--out book/data/cpu-longformer-model.json]

Both models are built from the same ``LongformerConfig`` (the shape of longformer-base-4096:
hidden 768, 12 heads, intermediate 3072, ``attention_window`` 512, random weights, no download;
``--layers`` of them) and run the same input: one sequence of L tokens, the first one global (a
classifier's [CLS]). Each measurement runs in a fresh process, so that its peak memory is its own:
the process builds its model, runs one forward (its output saved for the correctness check), one
more under a peak-memory probe (the increment of the peak resident memory), then times forwards
with ``torch.utils.benchmark`` at the given thread count. The rounds alternate the two models, so
that a change of machine load reaches both. The patched model's output must match the original's
(checked before the results are written). The JSON holds every repetition and the provenance.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .measure import PeakMemory, summarize, time_call
from .sweep import provenance, write

MODELS = ("original", "patched")


def build(model: str, spec: dict):
    """The Longformer of ``spec`` (random weights from seed 0), patched or not, in eval mode."""
    from transformers import LongformerConfig, LongformerModel
    from transformers.utils import logging

    from ..longformer import patch_hf_longformer

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


def worker(model: str, spec: dict, save: str) -> dict:
    """In a fresh process: build, run once (output saved to ``save``), measure memory, time."""
    torch.set_num_threads(spec["threads"])
    net, kwargs = build(model, spec), inputs(spec)

    def forward():
        with torch.no_grad():
            return net(**kwargs).last_hidden_state

    start = time.perf_counter()
    torch.save(forward(), save)
    first_s = time.perf_counter() - start
    with PeakMemory("cpu") as peak:
        forward()
    times = time_call(forward, "cpu", spec["threads"], min_time=0.0, min_reps=spec["reps"], first_s=first_s)
    return {"model": model, "first_call_s": first_s, "peak_bytes": peak.bytes, "times_s": times}


def run(spec: dict) -> dict:
    """Every round: each model in its own process (the order alternating); then the check."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(spec["rounds"]):
            for model in MODELS if r % 2 == 0 else MODELS[::-1]:
                save = str(Path(tmp) / f"{model}.pt")
                proc = subprocess.run(
                    [sys.executable, "-m", "swa_tutorial.bench.longformer_model", "--worker", model,
                     "--save", save, "--spec", json.dumps(spec)],
                    env=env, capture_output=True, text=True,
                )
                if proc.returncode:
                    raise RuntimeError(f"the {model} model's process failed:\n{proc.stderr[-2000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"round {r + 1}/{spec['rounds']} {model}: " + ", ".join(f"{t:.2f} s" for t in runs[-1]["times_s"]),
                      file=sys.stderr, flush=True)
        expected, actual = (torch.load(Path(tmp) / f"{m}.pt") for m in MODELS)
    difference = (actual - expected).abs().max().item()
    if not difference <= 1e-4 * max(1.0, expected.abs().max().item()):
        raise AssertionError(f"the patched model's output differs from the original's by {difference}")
    results = {}
    for model in MODELS:
        mine = [run_ for run_ in runs if run_["model"] == model]
        results[model] = {
            **summarize([t for run_ in mine for t in run_["times_s"]]),
            "peak_bytes": statistics.median(run_["peak_bytes"] for run_ in mine),
            "peak_bytes_per_process": [run_["peak_bytes"] for run_ in mine],
            "first_call_s": [run_["first_call_s"] for run_ in mine],
        }
    ratio = results["patched"]["median_s"] / results["original"]["median_s"]
    return {"ratio_patched_to_original": ratio, "max_abs_difference": difference, "results": results}


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
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per model")
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per process (at least)")
    parser.add_argument("--out", help="write the results as JSON here (e.g. book/data/cpu-longformer-model.json)")
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.spec), args.save)), flush=True)
        return
    spec = {name: getattr(args, name) for name in
            ("seq_len", "layers", "hidden", "heads", "window", "globals", "batch", "threads", "rounds", "reps")}
    doc = {"schema": "swa-tutorial-longformer-model/1", "provenance": provenance(torch.device("cpu"), args.threads, None),
           "config": {**spec, "dtype": "float32", "mode": "forward, torch.no_grad(), eval()"}}
    doc.update(run(spec))
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    for model in MODELS:
        r = doc["results"][model]
        print(f"{model:>9}: median {r['median_s']:.3f} s (IQR {r['iqr_s']:.3f} s, {len(r['times_s'])} runs), "
              f"peak memory {r['peak_bytes'] / 2**20:.0f} MiB")
    print(f"patched / original time: {doc['ratio_patched_to_original']:.3f}; "
          f"max |difference| {doc['max_abs_difference']:.2e}")
    if args.out:
        write(doc, args.out)


if __name__ == "__main__":
    main()
