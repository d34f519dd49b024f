"""A Mistral-shaped layer in transformers with "sdpa", "eager" and "swa_tutorial": prefill and decoding.

    python -m swa_tutorial.bench.hf_model [--lengths 4096 8192 16384] [--threads 1]
        [--device cpu] [--dtype float32] [--out book/data/cpu-hf-mistral-layer.json]

The model: transformers' ``MistralModel`` with one layer of Mistral 7B's attention (hidden 4096,
H = 32 query heads, H_kv = 8, d = 128, ``sliding_window`` 4096), random weights (seed 0), float32,
eval mode, no gradients. Its MLP is made negligible (``intermediate_size`` 64, vocabulary 128, no
language-model head), so that what differs between the implementations, the attention, is not
hidden behind work they share. The projections alone bound the gain: at L = 16384 tokens the q,
k, v, o projections take 2 L (2 * 4096^2 + 2 * 4096 * 1024) = 1.37 TFLOP, a dense masked attention
4 H L^2 d = 4.40 TFLOP, the window's band 4 H N d = 0.96 TFLOP (N = 58.7 million (query, key)
pairs: min(i + 1, 4096) keys for query i), so the window can be at most (1.37 + 4.40) / (1.37 +
0.96) = 2.5 times faster than a dense attention that computes every score. ``--hidden``,
``--heads``, ``--kv-heads`` and ``--window`` scale the layer down for a smaller machine.

Each (implementation, L) runs in a fresh process (on the CPU its address space capped at a
fraction of the available memory; one that does not fit is recorded as "oom" with the reason):

* correctness first: the implementation's output against "sdpa"'s on the same weights at L = 512;
* the mask: the peak memory of building the layer's attention mask alone, as the model builds it
  (``create_sliding_window_causal_mask``), its share of the forward's peak;
* time: ``--reps`` forwards (``time.perf_counter``; on a GPU synchronized, after one untimed
  forward), median and interquartile range;
* peak memory: over the first timed forward, the increment of the process's peak resident
  memory (CPU) or of ``torch.cuda.max_memory_allocated`` (GPU);
* decoding: in one process, after a prefill of ``--decode-context`` tokens (with "swa_tutorial":
  in a one-layer model the cache holds the same keys whichever attention filled it), the
  implementations take turns, one new token each, ``--decode-steps`` rounds: ms per token.

On a GPU (``--device cuda --dtype bfloat16``) "flex_attention" can join (``--impls``): transformers'
FlexAttention path, which compiles its kernel on the first call.

Ratios against "sdpa" come from one run of this command (medians, with the quartile bounds of
``swa_tutorial.bench.measure.compare``). The JSON holds every repetition and the provenance.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from swa_tutorial.bench.measure import PeakMemory, compare, resolve_device, summarize
from swa_tutorial.bench.sweeps import available_memory_bytes, provenance, write

SCHEMA = "swa-tutorial-hf-model/1"
IMPLS = ("sdpa", "eager", "swa_tutorial", "flex_attention")  # flex_attention: on a GPU (it compiles)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # max relative difference from sdpa at L = 512
SHAPE = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128, sliding_window=4096,
             num_hidden_layers=1, intermediate_size=64, vocab_size=128)


def model_for(impl: str, spec: dict, max_len: int):
    """The one-layer Mistral-shaped model (random weights, seed 0) with attention ``impl``, eval
    mode, on ``spec``'s device and dtype."""
    from transformers import MistralConfig, MistralModel

    from swa_tutorial.integrations import hf

    hf.register()
    torch.manual_seed(0)
    net = MistralModel(MistralConfig(**spec["shape"], max_position_embeddings=max_len)).eval()
    net.to(spec["device"], DTYPES[spec["dtype"]]).set_attn_implementation(impl)
    return net


def tokens(L: int, device) -> torch.Tensor:
    """One row of L random token ids [1, L] (seed 1)."""
    return torch.randint(0, SHAPE["vocab_size"], (1, L), generator=torch.Generator().manual_seed(1)).to(device)


def timed(fn, device) -> float:
    """Seconds of one call of ``fn`` (the device synchronized before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def check(net, impl: str, spec: dict) -> float:
    """max |out - sdpa's out| / max |sdpa's out| at L = 512; raises past the dtype's tolerance."""
    ids = tokens(512, spec["device"])
    with torch.no_grad():
        out = net(ids, use_cache=False).last_hidden_state
        net.set_attn_implementation("sdpa")
        expected = net(ids, use_cache=False).last_hidden_state
        net.set_attn_implementation(impl)
    error = ((out - expected).abs().max() / expected.abs().max()).item()
    if not error <= TOLERANCE[spec["dtype"]]:
        raise AssertionError(f"{impl} differs from sdpa by {error:.3g} (relative) at L = 512")
    return error


def mask_bytes(net, L: int, device) -> int:
    """Peak memory of building the layer's mask alone, as MistralModel does."""
    from transformers.masking_utils import create_sliding_window_causal_mask

    embeds = torch.empty(1, L, 0, device=device)
    with PeakMemory(device) as peak:
        mask = create_sliding_window_causal_mask(config=net.config, inputs_embeds=embeds, attention_mask=None,
                                                 cache=None, position_ids=torch.arange(L, device=device)[None])
    del mask
    return peak.bytes


def prefill(impl: str, spec: dict) -> dict:
    """In this (fresh) process: check, mask, then ``reps`` timed forwards, the first under a
    peak-memory probe."""
    device, L = torch.device(spec["device"]), spec["L"]
    net = model_for(impl, spec, L + 64)
    result = {"relative_error_vs_sdpa_at_512": check(net, impl, spec), "mask_bytes": mask_bytes(net, L, device)}
    ids = tokens(L, device)
    with torch.no_grad():
        if device.type == "cuda":
            net(ids, use_cache=False)  # a GPU's first call at a new length may compile or tune
        with PeakMemory(device) as peak:
            times = [timed(lambda: net(ids, use_cache=False), device)]
        times += [timed(lambda: net(ids, use_cache=False), device) for _ in range(spec["reps"] - 1)]
    return {**result, "peak_bytes": peak.bytes, **summarize(times)}


def decoding(impls: list, spec: dict) -> dict:
    """ms per new token for each of ``impls`` after one prefill of ``spec["L"]`` tokens (filled by
    swa_tutorial), the implementations taking turns token by token on the same cache."""
    from transformers import DynamicCache

    device, context, steps = torch.device(spec["device"]), spec["L"], spec["steps"]
    net = model_for("swa_tutorial", spec, context + len(impls) * (steps + 1) + 64)
    cache = DynamicCache(config=net.config)
    times = {impl: [] for impl in impls}
    with torch.no_grad():
        net(tokens(context, device), cache=cache, use_cache=True)
        ids, position = tokens(len(impls) * (steps + 1), device), context
        for step in range(steps + 1):  # the first round warms up
            for impl in impls if step % 2 == 0 else impls[::-1]:
                net.set_attn_implementation(impl)
                at = torch.tensor([[position]], device=device)
                times[impl].append(timed(lambda: net(ids[:, position - context][:, None], cache=cache,
                                                     use_cache=True, position_ids=at), device))
                position += 1
    keys = cache.layers[0].keys.shape[-2]
    return {impl: {"context": context, "keys_in_cache": keys, **summarize(t[1:])} for impl, t in times.items()}


def child(spec: dict) -> None:
    """One configuration in this process, under a cap on its address space; prints JSON."""
    torch.set_num_threads(spec["threads"])
    limit = spec["memory_limit_bytes"]
    if spec["device"] == "cpu":  # (a CUDA process reserves far more address space than it uses)
        with open("/proc/self/status") as f:
            in_use = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (in_use + limit, in_use + limit))
    result = prefill(spec["impl"], spec) if spec["what"] == "prefill" else decoding(spec["impls"], spec)
    print(json.dumps(result), flush=True)


def run_child(spec: dict) -> dict:
    """One configuration in a fresh process: its result, or why it has none ("oom", "error")."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "swa_tutorial.bench.hf_model", "--child", json.dumps(spec)],
                          env=env, capture_output=True, text=True)
    base = {k: spec[k] for k in ("what", "impl", "L")}
    if proc.returncode == 0:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if spec["what"] == "decode":  # one process, every implementation
            return [{**base, "impl": impl, "status": "ok", **r} for impl, r in result.items()]
        return {**base, "status": "ok", **result}
    # PyTorch's CPU allocator says "can't allocate memory" when the address-space cap refuses it
    oom = proc.returncode < 0 or any(s in proc.stderr for s in ("out of memory", "MemoryError", "OutOfMemoryError",
                                                                 "can't allocate memory"))
    return {**base, "status": "oom" if oom else "error",
            "reason": (f"needs more than the cap of {spec['memory_limit_bytes'] / 2**30:.1f} GiB; "
                       if oom else "") + proc.stderr.strip()[-400:]}


def describe(r: dict) -> str:
    """One result as a line of text."""
    line = f"{r['what']:>7} {r['impl']:>14} L={r['L']:>6}: "
    if r["status"] != "ok":
        return line + f"{r['status']} ({r['reason'][:120]})"
    if r["what"] == "prefill":
        return line + (f"median {r['median_s']:.2f} s (IQR {r['iqr_s']:.2f}), peak {r['peak_bytes'] / 2**20:.0f} MiB, "
                       f"mask {r['mask_bytes'] / 2**20:.0f} MiB")
    return line + f"{1e3 * r['median_s']:.1f} ms/token (IQR {1e3 * r['iqr_s']:.1f}), {r['keys_in_cache']} cached keys"


def ratios(results: list) -> dict:
    """swa_tutorial and eager against sdpa, per L: time (``compare``) and peak memory."""
    ok = {(r["what"], r["impl"], r["L"]): r for r in results if r["status"] == "ok"}
    out = {}
    for (what, impl, L), r in ok.items():
        base = ok.get((what, "sdpa", L))
        if impl == "sdpa" or base is None:
            continue
        entry = {"time": compare(r["times_s"], base["times_s"])}
        if what == "prefill":
            entry["peak_memory"] = r["peak_bytes"] / base["peak_bytes"]
        out[f"{what} {impl}/sdpa L={L}"] = entry
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m swa_tutorial.bench.hf_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", nargs="+", type=int, default=[4096, 8192, 16384])
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS[:3]))
    p.add_argument("--hidden", type=int, default=SHAPE["hidden_size"], help="hidden size (default: Mistral 7B's)")
    p.add_argument("--heads", type=int, default=SHAPE["num_attention_heads"], help="query heads H; d = hidden / H")
    p.add_argument("--kv-heads", type=int, default=SHAPE["num_key_value_heads"], help="key/value heads H_kv")
    p.add_argument("--window", type=int, default=SHAPE["sliding_window"], help="sliding_window W (keys)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--reps", type=int, default=3, help="timed forwards per (implementation, L)")
    p.add_argument("--decode-context", type=int, default=16384)
    p.add_argument("--decode-steps", type=int, default=16)
    p.add_argument("--memory-fraction", type=float, default=0.8, help="cap of each process's memory")
    p.add_argument("--commit", default=None, help="git commit to record (default: git rev-parse HEAD)")
    p.add_argument("--out", help="JSON file (e.g. book/data/cpu-hf-mistral-layer.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    device = resolve_device(args.device)
    shape = dict(SHAPE, hidden_size=args.hidden, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                 head_dim=args.hidden // args.heads, sliding_window=args.window)
    limit = int(args.memory_fraction * available_memory_bytes())
    doc = {"schema": SCHEMA, "provenance": provenance(device, args.threads, args.commit),
           "config": {**shape, "device": str(device), "dtype": args.dtype, "mode": "forward, torch.no_grad(), eval()",
                      "reps": args.reps, "memory_limit_bytes": limit, "decode_steps": args.decode_steps},
           "results": []}
    common = dict(threads=args.threads, memory_limit_bytes=limit, reps=args.reps, steps=args.decode_steps,
                  device=str(device), dtype=args.dtype, shape=shape)
    prefills = [dict(common, what="prefill", impl=impl, L=L) for L in args.lengths for impl in args.impls]
    decode = dict(common, what="decode", impl="all", impls=args.impls, L=args.decode_context)
    # eager, the slowest, last: a run cut short by a time limit keeps the others' results
    specs = [s for s in prefills if s["impl"] != "eager"] + [decode] + [s for s in prefills if s["impl"] == "eager"]
    for spec in specs:
        found = run_child(spec)
        for r in found if isinstance(found, list) else [found]:
            doc["results"].append(r)
            print(describe(r), flush=True)
        doc["ratios_to_sdpa"] = ratios(doc["results"])
        if args.out:
            write(doc, args.out)
    if hasattr(os, "getloadavg"):
        doc["provenance"]["load_average_at_end"] = os.getloadavg()
    for name, entry in doc["ratios_to_sdpa"].items():
        t = entry["time"]
        memory = f", peak memory x{entry['peak_memory']:.2f}" if "peak_memory" in entry else ""
        print(f"{name}: time x{t['ratio']:.2f} ({t['low']:.2f} .. {t['high']:.2f}){memory}")
    if args.out:
        write(doc, args.out)


if __name__ == "__main__":
    main()
