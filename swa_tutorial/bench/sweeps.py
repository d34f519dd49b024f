"""One benchmark configuration from inputs to result, and a sweep over many into one JSON file.

A configuration is an implementation at one (dtype, mode, L) with fixed B, H, d, w. Its steps,
in this order: make seeded inputs; for a compiled implementation, one call that compiles (its
time is reported apart); one call inside the memory measurement (prepare + attend, and the
backward pass in mode "fwd+bwd"); the correctness check of that call's output (and gradients)
against float64 dense attention; only if it passes, the timing. Running out of memory at any
step is recorded as the result "oom". On the CPU each configuration runs in a fresh process
(so its peak memory is its own), with its address space capped so that running out of memory
is an error, not the system's OOM killer. On a GPU the configurations share one process, and a
compiled implementation starts each from empty compiler caches (``torch.compiler.reset``): every
configuration compiles for its own shapes, as in a fresh process, instead of reusing a kernel
that an earlier length made shape-generic.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import torch

from swa_tutorial.bench.correctness import check
from swa_tutorial.bench.implementations import IMPLEMENTATIONS, why_not
from swa_tutorial.bench.measure import (
    PeakMemory,
    is_out_of_memory,
    matmul_peak,
    summarize,
    time_call,
    useful_flops,
)

SCHEMA = "swa-tutorial-bench/1"
DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODES = ("fwd", "fwd+bwd")


def make_inputs(spec: dict):
    """Seeded q, k, v [B, L, H, d] (and the output gradient for fwd+bwd) on the spec's device."""
    gen = torch.Generator().manual_seed(spec["seed"])
    shape = (spec["B"], spec["L"], spec["H"], spec["d"])
    backward = spec["mode"] == "fwd+bwd"
    q, k, v, g = (torch.randn(shape, generator=gen) for _ in range(4))
    q, k, v = (x.to(spec["device"], DTYPES[spec["dtype"]]).requires_grad_(backward) for x in (q, k, v))
    return q, k, v, (g.to(q) if backward else None)


def run_config(spec: dict) -> dict:
    """Run one configuration (see the module docstring); returns its result as a dict."""
    impl = IMPLEMENTATIONS[spec["impl"]]
    L, w = spec["L"], spec["w"]
    result = {key: spec[key] for key in ("impl", "dtype", "mode", "L")}
    reason = why_not(impl, L, w, spec["loop_max_len"], spec["device"])
    if reason:
        return {**result, "status": "unsupported", "reason": reason}
    device = torch.device(spec["device"])
    backward = spec["mode"] == "fwd+bwd"
    try:
        q, k, v, g = make_inputs(spec)

        def step(state):
            if backward:
                q.grad = k.grad = v.grad = None
            out = impl.attend(q, k, v, w, state)
            if backward:
                out.backward(g)
            return out

        def timed_step(state):
            start = time.perf_counter()
            out = step(state)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out, time.perf_counter() - start

        impl.load(spec["H"], spec["d"], w)
        if hasattr(os, "getloadavg"):
            result["load_average"] = os.getloadavg()[0]  # other work on the machine, 1-minute mean
        if impl.compiled:
            torch.compiler.reset()
            _, result["compile_s"] = timed_step(impl.prepare(L, w, device))  # compiles, then runs once
        with PeakMemory(device) as memory:
            state = impl.prepare(L, w, device)
            out, first_s = timed_step(state)
        result["memory_bytes"] = memory.bytes
        if impl.sdpa_backend:
            result["sdpa_backend"] = impl.sdpa_backend(q, k, v, state)
        result["check"] = check(out.detach(), q, k, v, None if impl.full_attention else w, g)
        del out
        if not result["check"]["ok"]:
            return {**result, "status": "wrong", "reason": "differs from float64 dense attention"}
        times = time_call(lambda: step(state), device, spec["threads"], spec["min_time"], spec["min_reps"], first_s)
    except Exception as error:  # noqa: BLE001  (out of memory is a result; anything else is reported)
        if is_out_of_memory(error):
            return {**result, "status": "oom", "reason": str(error).splitlines()[0][:300]}
        return {**result, "status": "error", "reason": "".join(traceback.format_exception_only(error)).strip()[:500]}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    stats = summarize(times)
    flops = useful_flops(spec["B"], spec["H"], L, w, spec["d"], backward)
    return {**result, "status": "ok", **stats, "useful_flops": flops, "useful_flops_per_s": flops / stats["median_s"]}


def run_isolated(spec: dict, memory_limit_bytes: int) -> dict:
    """Run one configuration in a fresh Python process (the CPU path); a crash is a result too."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    spec = {**spec, "memory_limit_bytes": memory_limit_bytes}
    proc = subprocess.run(
        [sys.executable, "-m", "swa_tutorial.bench", "--child", json.dumps(spec)], env=env, capture_output=True, text=True
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    result = {key: spec[key] for key in ("impl", "dtype", "mode", "L")}
    killed = proc.returncode < 0
    return {
        **result,
        "status": "oom" if killed else "error",
        "reason": f"process ended by signal {-proc.returncode}" if killed else proc.stderr.strip()[-500:],
    }


def child_main(spec_json: str) -> None:
    """Entry point of the isolated process: cap the address space, run, print the result as JSON."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    limit = spec.get("memory_limit_bytes")
    if limit:
        in_use = _vm_size_bytes()
        resource.setrlimit(resource.RLIMIT_AS, (in_use + limit, in_use + limit))
    print(json.dumps(run_config(spec)), flush=True)


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


CPU_ID = (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))  # /proc/cpuinfo keys
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "sve", "asimd")


def cpu_info() -> dict:
    """The CPU as Linux names it (the first processor of /proc/cpuinfo), for the provenance.

    ``cpu``: its model name (a virtual machine may show only the family, e.g. "AMD EPYC");
    ``cpu_id``: vendor, family, model and stepping, which pin down the generation even then;
    ``cpu_vector_extensions``: those of its instruction-set extensions that set matrix speed;
    ``virtual_machine``: whether it runs under a hypervisor (other guests may share the cores).
    """
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    cpu_id = " ".join(f"{name} {fields[key]}" for name, key in CPU_ID if key in fields)
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": " ".join(filter(None, [fields.get("vendor_id"), cpu_id])) or None,
        "cpu_vector_extensions": [x for x in VECTOR_EXTENSIONS if x in flags],
        "virtual_machine": "hypervisor" in flags,
    }


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001  (not installed, or broken: either way, not used)
        return None


def provenance(device: torch.device, threads: int, commit: str | None) -> dict:
    """Where and with what a run was made: hardware, software, commit, date."""
    device = torch.device(device)
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit or _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        # OpenMP's idle threads spin by default; on a CPU shared with busy processes that makes
        # every parallel call wait for a descheduled thread ("passive" lets them sleep instead).
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = os.getloadavg()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device=props.name,
            sm_count=props.multi_processor_count,
            device_memory_bytes=props.total_memory,
            allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        info["device"] = info["cpu"]
    return info


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def sweep(
    *,
    device="cpu",
    dtypes=("float32",),
    modes=("fwd",),
    lengths=(1024, 2048, 4096),
    impls=tuple(IMPLEMENTATIONS),
    B=1,
    H=12,
    d=64,
    window=256,
    threads=None,
    min_time=1.0,
    min_reps=3,
    loop_max_len=4096,
    seed=0,
    isolate=None,
    memory_fraction=0.75,
    peak_n=None,
    time_budget_s=None,
    out=None,
    commit=None,
    progress=None,
) -> dict:
    """Run every (mode, dtype, L, implementation) and return the results document.

    ``isolate`` (default: on the CPU) runs each configuration in its own process, with at most
    ``memory_fraction`` of the available memory. ``out``: a path the document is written to
    after every configuration (so an interrupted sweep keeps what it measured). ``progress``: None,
    or a function called as progress(done, total, label) before each configuration (the label
    names it: implementation, L, dtype, mode) and as progress(total, total, None) at the end. After
    ``time_budget_s`` seconds the remaining configurations are recorded as skipped.
    """
    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    isolate = device.type == "cpu" if isolate is None else isolate
    limit = int(memory_fraction * available_memory_bytes()) if isolate else None
    doc = {
        "schema": SCHEMA,
        "provenance": provenance(device, threads, commit),
        "config": {
            "device": str(device), "dtypes": list(dtypes), "modes": list(modes), "lengths": list(lengths),
            "impls": list(impls), "B": B, "H": H, "d": d, "window": window, "threads": threads,
            "min_time_s": min_time, "min_reps": min_reps, "loop_max_len": loop_max_len, "seed": seed,
            "isolated_processes": isolate, "memory_limit_bytes": limit,
            "implementations": {name: IMPLEMENTATIONS[name].description for name in impls},
        },
        "peak": {},
        "results": [],
    }
    peak_n = peak_n or (8192 if device.type == "cuda" else 2048)
    for dtype in dtypes:
        doc["peak"][dtype] = matmul_peak(device, DTYPES[dtype], threads, peak_n)
    configs = [(m, t, L, i) for m in modes for t in dtypes for L in lengths for i in impls]
    start = time.perf_counter()
    for done, (mode, dtype, L, impl) in enumerate(configs):
        if progress:
            progress(done, len(configs), f"{impl} L={L} {dtype} {mode}")
        spec = {
            "impl": impl, "dtype": dtype, "mode": mode, "L": L, "B": B, "H": H, "d": d, "w": window,
            "device": str(device), "seed": seed, "threads": threads, "min_time": min_time,
            "min_reps": min_reps, "loop_max_len": loop_max_len,
        }
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            result = {**{k: spec[k] for k in ("impl", "dtype", "mode", "L")}, "status": "skipped", "reason": "time budget"}
        else:
            result = run_isolated(spec, limit) if isolate else run_config(spec)
        if result["status"] == "ok":
            result["fraction_of_peak"] = result["useful_flops_per_s"] / doc["peak"][dtype]["flops_per_s"]
        doc["results"].append(result)
        if out:
            write(doc, out)
    if progress:
        progress(len(configs), len(configs), None)
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    if out:
        write(doc, out)
    return doc


def write(doc: dict, path) -> None:
    """Write the results document as JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(path)


def table(doc: dict, width: int = 76) -> str:
    """The results as text, at most ``width`` characters a line: one block per (mode, dtype), one
    line per configuration, then why each configuration that was not timed was not, and which
    SDPA backend ran."""
    prov, cfg = doc["provenance"], doc["config"]
    threads = f"{prov['threads']} thread" + "s" * (prov["threads"] != 1)
    on = f"{prov['device']}, {threads}" if cfg["device"] == "cpu" else f"{prov['device']} ({cfg['device']})"
    lines = [f"B={cfg['B']} H={cfg['H']} d={cfg['d']} w={cfg['window']} on {on}"]
    head = f"{'L':>6} {'impl':17} {'median ms':>10} {'IQR ms':>9} {'peak MiB':>9} {'TFLOP/s':>8} {'% peak':>7}"
    notes, backends = {}, {}
    for mode, dtype in dict.fromkeys((r["mode"], r["dtype"]) for r in doc["results"]):
        lines += [f"{mode}, {dtype}", head]
        for r in (r for r in doc["results"] if (r["mode"], r["dtype"]) == (mode, dtype)):
            mem = r.get("memory_bytes")
            if r["status"] == "ok":
                cells = f"{1e3 * r['median_s']:>10.2f} {1e3 * r['iqr_s']:>9.2f} "
            else:
                cells = f"{r['status']:>20} "
                notes.setdefault((r["impl"], mode, dtype, r["status"], r.get("reason")), []).append(r["L"])
            cells += f"{mem / 2**20:>9.1f} " if mem is not None else f"{'':>9} "
            if r["status"] == "ok":
                cells += f"{r['useful_flops_per_s'] / 1e12:>8.3f} {100 * r['fraction_of_peak']:>6.1f}%"
            lines.append(f"{r['L']:>6} {r['impl']:17} {cells}".rstrip())
            if r.get("sdpa_backend"):
                backends.setdefault(r["impl"], set()).add(r["sdpa_backend"])
    for (impl, mode, dtype, status, reason), lengths in notes.items():
        text = f"{impl} ({mode}, {dtype}) at L = {', '.join(map(str, lengths))}: {status}: {reason}"
        lines += textwrap.wrap(text, width, subsequent_indent="    ")
    if backends:
        text = "SDPA backend: " + "; ".join(f"{impl} {', '.join(sorted(b))}" for impl, b in backends.items())
        lines += textwrap.wrap(text, width, subsequent_indent="    ")
    return "\n".join(lines)
