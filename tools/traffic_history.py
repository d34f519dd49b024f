"""The memory traffic of the code a benchmark file timed: ``python tools/traffic_history.py``.

A benchmark file times the package as it was at one commit (its provenance's ``git_commit``), and
the package changes: the chunked path of an earlier commit may move fewer or more bytes than
today's. The roofline of the tiles chapter places each timing at the arithmetic intensity of
the code that was timed, so this tool counts, for every benchmark file given, the bytes and
product FLOPs of each implementation it names (default: the package's own, ``swa`` and
``tiles``) at that file's commit: it extracts the package of the commit (``git archive``),
and in a fresh process with that package on the path counts one forward call of the
implementation on meta tensors of each timed shape, with :func:`swa_tutorial.tutorial.traffic.count_traffic`
(today's counting code, loaded from its file). The counts, with what was counted, go to one JSON
file (``-o``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from swa_tutorial.bench.sweeps import provenance

SCHEMA = "swa-tutorial-traffic/1"
ROOT = Path(__file__).resolve().parents[1]
COUNTER = ROOT / "swa_tutorial" / "tutorial" / "traffic.py"

# Run in a fresh process, with the package of one commit first on the path.
_CHILD = r"""
import importlib.util, json, sys
import torch
spec = importlib.util.spec_from_file_location("swa_traffic_counter", sys.argv[2])
counter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(counter)
sys.path.insert(0, sys.argv[1])
from swa_tutorial.bench.implementations import IMPLEMENTATIONS
results = []
for job in json.loads(sys.argv[3]):
    if job["impl"] not in IMPLEMENTATIONS:
        continue
    B, L, H, d, w = job["B"], job["L"], job["H"], job["d"], job["window"]
    q, k, v = torch.empty(3, B, L, H, d, device="meta", dtype=getattr(torch, job["dtype"]))
    attend = IMPLEMENTATIONS[job["impl"]].attend
    _, ops = counter.count_traffic(attend, q, k, v, w, None)
    results.append({**job, "read": sum(o.read for o in ops), "written": sum(o.written for o in ops),
                    "flops": sum(o.flops for o in ops), "operators": len(ops)})
print(json.dumps(results))
"""


def jobs_of(doc: dict, impls) -> list[dict]:
    """The forward calls of ``impls`` a benchmark file timed: one per (impl, dtype, L)."""
    cfg = doc["config"]
    return [
        {"impl": r["impl"], "dtype": r["dtype"], "L": r["L"], "B": cfg["B"], "H": cfg["H"], "d": cfg["d"],
         "window": cfg["window"]}
        for r in doc["results"]
        if r["impl"] in impls and r["status"] == "ok" and r["mode"] == "fwd"
    ]


def count_at(commit: str, jobs: list[dict]) -> list[dict]:
    """The counts of ``jobs`` with the package as it was at ``commit``."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "package.tar"
        subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "swa_tutorial"], check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        out = subprocess.run([sys.executable, "-c", _CHILD, tmp, str(COUNTER), json.dumps(jobs)],
                             capture_output=True, text=True, check=True, cwd=tmp)
    return json.loads(out.stdout)


def run(paths, impls=("swa", "tiles")) -> dict:
    """Counts for every benchmark file in ``paths``, each at its own commit."""
    doc = {"schema": SCHEMA, "provenance": provenance("cpu", 1, None), "counter": "swa_tutorial.tutorial.traffic.count_traffic"
           " (one forward call on meta tensors; each operator's inputs read once, its outputs written once)",
           "results": []}
    for path in paths:
        bench = json.loads(Path(path).read_text())
        recorded = bench["provenance"]["git_commit"]
        commit = recorded.removesuffix("+uncommitted changes")
        for count in count_at(commit, jobs_of(bench, impls)):
            doc["results"].append({"file": Path(path).name, "commit": commit,
                                   "uncommitted_changes": commit != recorded, **count})
    return doc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python tools/traffic_history.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("files", nargs="+", help="benchmark result files (JSON) whose forward timings to count")
    p.add_argument("--impls", nargs="+", default=["swa", "tiles"], help="implementations to count")
    p.add_argument("--out", "-o", default=None, help="JSON file for the counts (none is written without it)")
    args = p.parse_args(argv)
    doc = run(args.files, args.impls)
    for r in doc["results"]:
        print(f"{r['file']:26} {r['commit'][:8]} {r['impl']:6} {r['dtype']:9} L={r['L']:6} "
              f"{(r['read'] + r['written']) / 1e9:8.3f} GB {r['flops'] / 1e9:8.2f} GFLOP")
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
