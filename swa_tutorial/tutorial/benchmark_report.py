"""The committed benchmark files read as tables: what the benchmarks chapter and its appendix print.

A *run* is one JSON file written by ``python -m swa_tutorial.bench`` (schema
``swa_tutorial.bench.sweeps.SCHEMA``): its ``provenance`` (machine, software, commit, load),
its ``config`` (B, H, d, w, lengths, implementations, dtypes, modes) and one ``result`` per
configuration (status, median and IQR of the times, every timing, peak memory). Every function
here reads runs and returns text or numbers; none times anything. Two implementations are
compared only within one run, by ``swa_tutorial.bench.compare``: the ratio of the medians and
the range the quartiles allow, "~" when that range contains 1 (within noise).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from swa_tutorial.bench import IMPLEMENTATIONS, compare
from swa_tutorial.bench.measure import quartiles
from swa_tutorial.bench.sweeps import SCHEMA

WIDTH = 76  # characters of printed output that fit the book's text column


def load_runs(folder) -> dict[str, dict]:
    """The runs of ``folder``'s JSON files, by file name (files of other benchmarks are left out)."""
    runs = {}
    for path in sorted(Path(folder).glob("*.json")):
        run = json.loads(path.read_text())
        if run.get("schema") == SCHEMA:
            runs[path.name] = run
    return runs


def by_impl(run: dict, dtype: str = "float32", mode: str = "fwd") -> dict:
    """(impl, L) -> result, for one dtype and mode of a run."""
    return {(r["impl"], r["L"]): r for r in run["results"] if r["dtype"] == dtype and r["mode"] == mode}


def tick(seq_len: int) -> str:
    """A length as the figures write it: 512 as "512", 2048 as "2K" (K = 1024)."""
    return f"{seq_len // 1024}K" if seq_len >= 1024 else str(seq_len)


def caption(run: dict) -> str:
    """Where a run was made: machine (and load, on a CPU), software, shape, date and commit."""
    prov, cfg = run["provenance"], run["config"]
    on_cpu = cfg["device"] == "cpu"
    load = prov.get("load_average_at_start")
    busy = f"; 1-min load average at start {load[0]:.1f}" if load and on_cpu else ""
    threads = f"{prov['threads']} thread" + "s" * (prov["threads"] > 1)
    machine = f"{prov['cpu_count']} cores, {threads}{busy}" if on_cpu else f"{prov['sm_count']} SMs"
    software = f"torch {prov['torch']}" + ("" if on_cpu else (
        f", CUDA {prov['cuda']}, Triton {prov['triton']}, transformers {prov['transformers']}, "
        f"TF32 {prov['allow_tf32']}"))
    shape = f"B={cfg['B']}, H={cfg['H']}, d={cfg['d']}, w={cfg['window']}"
    return f"{prov['device']}, {machine}; {software}; {shape}; {prov['date_utc'][:10]}, commit {prov['git_commit'][:10]}"


def command(run: dict) -> str:
    """The command line that makes a run with these settings (``-o`` aside), wrapped to the column."""
    cfg = run["config"]
    text = (f"python -m swa_tutorial.bench --device {cfg['device']} --dtype {' '.join(cfg['dtypes'])} "
            f"--mode {' '.join(cfg['modes'])} -L {' '.join(map(str, cfg['lengths']))} -w {cfg['window']} "
            f"-B {cfg['B']} -H {cfg['H']} -d {cfg['d']} --impls {' '.join(cfg['impls'])} "
            f"--threads {cfg['threads']} --min-time {cfg['min_time_s']:g} --min-reps {cfg['min_reps']}")
    return " \\\n".join(textwrap.wrap(text, WIDTH - 6, subsequent_indent="    ", break_on_hyphens=False))


def median_iqr(result: dict, unit: float = 1e3, digits: int = 0) -> str:
    """"median (IQR)" of a result in ``unit`` (ms by default), or its status if it did not run."""
    if result.get("status") != "ok":
        return result.get("status", "-")
    return f"{unit * result['median_s']:.{digits}f} ({unit * result['iqr_s']:.{digits}f})"


def ratio(res: dict, a: str, b: str, seq_len: int) -> str:
    """"median ratio [low-high]" of a's time over b's at one length, "~" when within noise."""
    ra, rb = res.get((a, seq_len), {}), res.get((b, seq_len), {})
    if not ra.get("status") == rb.get("status") == "ok":
        return "-"
    c = compare(ra["times_s"], rb["times_s"])
    return f"{c['ratio']:.2f} [{c['low']:.2f}-{c['high']:.2f}]" + (" ~" if c["within_noise"] else "")


def mib(res: dict, impl: str, seq_len: int) -> float | None:
    """Peak memory of (impl, L) in MiB, or None where it was not measured."""
    m = res.get((impl, seq_len), {}).get("memory_bytes")
    return None if m is None else m / 2**20


def time_table(run: dict, dtype: str = "float32", mode: str = "fwd") -> str:
    """Median (IQR) in ms: one row per length, one column per implementation."""
    res, impls = by_impl(run, dtype, mode), run["config"]["impls"]
    lines = [f"{'L':>6}" + "".join(f"{i:>14}" for i in impls)]
    for L in run["config"]["lengths"]:
        lines.append(f"{L:>6}" + "".join(f"{median_iqr(res.get((i, L), {})):>14}" for i in impls))
    return "\n".join(lines)


def ratio_table(run: dict, pairs, dtype: str = "float32", mode: str = "fwd") -> str:
    """The time ratio of each pair (a, b) of implementations at each length, with its range."""
    res = by_impl(run, dtype, mode)
    lines = [f"{'L':>6}" + "".join(f"{a + ' / ' + b:>23}" for a, b in pairs)]
    for L in run["config"]["lengths"]:
        lines.append(f"{L:>6}" + "".join(f"{ratio(res, a, b, L):>23}" for a, b in pairs))
    return "\n".join(lines)


def memory_table(run: dict, dtype: str = "float32", mode: str = "fwd", growth=None) -> str:
    """Peak MiB, one row per length, one column per implementation; with ``growth=(L1, L2)``, a
    last row with each peak's growth from L1 to L2."""
    res, impls = by_impl(run, dtype, mode), run["config"]["impls"]
    lines = [f"{'L':>6}" + "".join(f"{i:>14}" for i in impls)]
    for L in run["config"]["lengths"]:
        cells = ["-" if mib(res, i, L) is None else f"{mib(res, i, L):.0f}" for i in impls]
        lines.append(f"{L:>6}" + "".join(f"{c:>14}" for c in cells))
    if growth:
        a, b = growth
        cells = ["-" if mib(res, i, b) is None else f"x{mib(res, i, b) / mib(res, i, a):.2f}" for i in impls]
        lines.append(f"{'growth':>6}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def goal(res: dict, kind: str, a: str, b: str, len_a: int, len_b: int | None = None) -> tuple[float, float, float]:
    """A measured a / b with the range its quartiles allow: times ("time") or peak memory
    ("memory", one measurement, so the range is the value itself)."""
    ra, rb = res[a, len_a], res[b, len_b or len_a]
    if kind == "time":
        c = compare(ra["times_s"], rb["times_s"])
        return c["ratio"], c["low"], c["high"]
    if kind == "memory":
        value = ra["memory_bytes"] / rb["memory_bytes"]
        return value, value, value
    raise ValueError(f"kind must be 'time' or 'memory', got {kind!r}")


MEETS = {">=": lambda x, bound: x >= bound, "<=": lambda x, bound: x <= bound, "<": lambda x, bound: x < bound}


def check_goals(goals: dict) -> str:
    """Each goal {name: ((value, low, high), bound, op)} with its value, range and verdict."""
    lines = []
    for name, ((value, low, high), bound, op) in goals.items():
        met = [MEETS[op](x, bound) for x in (low, value, high)]
        verdict = "met" if all(met) else "met by the median only" if met[1] else "NOT met"
        spread = f"[{low:.2f}-{high:.2f}]" if low != high else ""
        lines.append(f"{name:32} {value:6.2f} {spread:13} {verdict}")
    return "\n".join(lines)


def fastest(run: dict, dtype: str, mode: str, seq_len: int) -> str:
    """The fastest way to the band at one length of a run, then "~" and those within noise of it."""
    res = by_impl(run, dtype, mode)
    ok = {i: r for (i, L), r in res.items()
          if L == seq_len and r["status"] == "ok" and not IMPLEMENTATIONS[i].full_attention}
    best = min(ok, key=lambda i: ok[i]["median_s"])
    ties = [i for i in ok if i != best and compare(ok[i]["times_s"], ok[best]["times_s"])["within_noise"]]
    return best + (f" ~ {', '.join(ties)}" if ties else "")


def fastest_spans(run: dict, dtype: str, mode: str) -> list[tuple[int, int, str]]:
    """[(first L, last L, the fastest and its ties)]: consecutive lengths with the same verdict merged."""
    spans: list[list] = []
    for L in run["config"]["lengths"]:
        label = fastest(run, dtype, mode, L)
        if spans and spans[-1][2] == label:
            spans[-1][1] = L
        else:
            spans.append([L, L, label])
    return [tuple(s) for s in spans]


def crossover(run: dict, dtype: str) -> int | None:
    """The shortest length at which the chunked path ("swa") beats dense SDPA by more than the noise."""
    res = by_impl(run, dtype)
    for L in run["config"]["lengths"]:
        dense, swa = res.get(("dense_sdpa", L), {}), res.get(("swa", L), {})
        if dense.get("status") == swa.get("status") == "ok":
            c = compare(dense["times_s"], swa["times_s"])
            if c["ratio"] > 1 and not c["within_noise"]:
                return L
    return None


def quartile_line(result: dict) -> str:
    """L, then q1, median and q3 of a result's timings in ms, and its compile time if it has one."""
    q = [1e3 * x for x in quartiles(result["times_s"])]
    compiled = f"  compile {result['compile_s']:.2f} s" if "compile_s" in result else ""
    return f"{result['L']:>6} " + " ".join(f"{x:7.3f}" for x in q) + compiled


# The kernel's GPU run (python -m swa_tutorial.bench.kernel_timing and .triton_check): files of
# their own schemas, one per shape and one per check, read here as tables.


def load_json(path) -> dict:
    """One committed JSON file."""
    return json.loads(Path(path).read_text())


def kernel_rows(run: dict):
    """(L, mode, row) for each configuration of a kernel_timing file, in the file's order."""
    for row in run["results"]:
        yield row["seq_len"], row["mode"], row


def kernel_time(result: dict) -> str:
    """"median (IQR)" in ms of one implementation in a kernel_timing file, or why it has none."""
    if "median_s" not in result:
        return next(iter(result), "-")  # "error" or "out_of_memory"
    return f"{1e3 * result['median_s']:.2f} ({1e3 * result['iqr_s']:.2f})"


def kernel_race_table(run: dict, other: str = "flex") -> str:
    """Median (IQR) in ms of the Triton kernel and of ``other``, and the kernel's time over
    ``other``'s with the range the quartiles allow ("~" when within noise)."""
    lines = [f"{'L':>6} {'mode':8}{'triton ms':>15}{other + ' ms':>15}{'triton / ' + other:>22}"]
    for L, mode, row in kernel_rows(run):
        timed = row["implementations"]
        c = row[f"triton_over_{other}"]
        spread = f"{c['ratio']:.2f} [{c['low']:.2f}-{c['high']:.2f}]" + (" ~" if c["within_noise"] else "")
        lines.append(f"{tick(L):>6} {mode:8}{kernel_time(timed['triton']):>15}"
                     f"{kernel_time(timed[other]):>15}{spread:>22}")
    return "\n".join(lines)


def kernel_rate_table(run: dict, impls=("triton", "flex", "sdpa_flash")) -> str:
    """Useful TFLOP/s of each implementation (only the cells inside the window count), with its
    share of the matrix-product peak the same run measured."""
    lines = [f"{'L':>6} {'mode':8}" + "".join(f"{i:>16}" for i in impls)]
    for L, mode, row in kernel_rows(run):
        timed = row["implementations"]
        cells = [f"{timed[i]['useful_tflops_per_s']:.0f} ({timed[i]['fraction_of_matmul_peak']:.0%})" for i in impls]
        lines.append(f"{tick(L):>6} {mode:8}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def check_case(case: dict) -> str:
    """One case of a triton_check file in a few words: dtype, L, heads, d, window, padding, cap."""
    heads = f"{case['heads']}/{case['kv_heads']}" if case.get("kv_heads") else str(case["heads"])
    cap = f", cap {case['softcap']:g}" if case.get("softcap") else ""
    strided = ", strided" if case["layout"] != "contiguous" else ""
    window = f"({case['window'][0]}, {case['window'][1]})"
    return (f"{case['dtype']} L={case['seq_len']} H={heads} d={case['head_dim']} {window} "
            f"{case['padding']}{cap}{strided}")


def check_failures(check: dict) -> list[str]:
    """Each failed case of a triton_check file, wrapped to ``WIDTH``: the error it raised, or each
    quantity over its allowance, as error / allowance."""
    lines = []
    for result in check["cases"]:
        if result["ok"]:
            continue
        if "error" in result:
            why = "raised " + result["error"]
        else:
            errors, allowed = result["errors"], result["allowed"]
            why = ", ".join(f"{n} {e / allowed[n]:.2f}x" if allowed[n] else f"{n} {e:.1e} over 0"
                            for n, e in errors.items() if e > allowed[n])
        lines.append(textwrap.fill(f"{check_case(result['case'])}: {why}", WIDTH, subsequent_indent="    "))
    return lines
