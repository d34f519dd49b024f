"""What every experiment command shares: a progress display, the provenance, the JSON file.

A result file is one JSON object: ``schema``, ``command`` (how to rerun it), ``provenance``
(commit, machine, software: ``swa_tutorial.bench.sweeps.provenance``), the experiment's own
settings, and ``rows``, one per measurement.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from swa_tutorial.bench.sweeps import provenance


def progress(items: list, describe):
    """Yield ``items``, showing progress: a tqdm bar named after the current item
    (``describe(item)``), or without tqdm one line per item on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        print("(no progress bar: tqdm is not installed; pip install 'swa-tutorial[bench]')", file=sys.stderr)
        for number, item in enumerate(items, start=1):
            print(f"[{number}/{len(items)}] {describe(item)}", file=sys.stderr, flush=True)
            yield item
        return
    bar = tqdm(items, unit="run")
    for item in bar:
        bar.set_description_str(describe(item))
        yield item


def parser(module: str, doc: str, steps: int) -> argparse.ArgumentParser:
    """The options every experiment takes: -o FILE, --steps, --seeds, --threads."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimiser steps per model (default {steps})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return parser


def header(schema: str, module: str, threads: int) -> dict:
    """Set torch's thread count; the result's first fields: schema, the command as a user would
    type it (``python -m module args``), and the provenance of a CPU run."""
    torch.set_num_threads(threads)
    return {
        "schema": schema,
        "command": shlex.join(["python", "-m", module, *sys.argv[1:]]),
        "provenance": provenance(torch.device("cpu"), threads, None),
    }


def collect(result: dict, items: list, describe, measure, path: Path) -> None:
    """Extend ``result["rows"]`` with ``measure(item)`` (a list of rows) for each item, with
    progress shown; add the total time and write the result to ``path``."""
    start = time.perf_counter()
    for item in progress(items, describe):
        result["rows"].extend(measure(item))
    result["total_seconds"] = round(time.perf_counter() - start, 1)
    write(path, result)
    print(f"{len(items)} models, {len(result['rows'])} rows, {result['total_seconds']:.0f} s -> {path}")


def write(path: Path, result: dict) -> None:
    """Write ``result`` as indented JSON (a folder is made if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def load(path: Path) -> dict:
    """A result file written by :func:`write`."""
    return json.loads(Path(path).read_text())
