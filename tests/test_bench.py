"""The benchmark harness: its arithmetic, its correctness check, its records. No timing is asserted."""

import json
import sys
from pathlib import Path

import pytest
import torch

from swa_tutorial import dense_attention, dense_band_mask, sliding_window_attention
from swa_tutorial.bench import (IMPLEMENTATIONS, band_pairs, check, query_slices, sweep, table,
                                useful_flops, write)
from swa_tutorial.bench import __main__ as cli
from swa_tutorial.bench import correctness
from swa_tutorial.bench.implementations import Implementation
from swa_tutorial.bench.measure import compare, resolve_device
from swa_tutorial.bench.sweeps import SCHEMA, cpu_info, run_config, run_isolated

DATA = Path(__file__).resolve().parents[1] / "book" / "data"


@pytest.mark.parametrize("L", [1, 2, 3, 7, 8, 16, 33, 100])
@pytest.mark.parametrize("w", [1, 2, 3, 5, 8, 64])
def test_band_pairs_counts_the_dense_band(L, w):
    """N = L(2w + 1) - w(w + 1) is the number of True cells of the dense band mask (L^2 if w >= L)."""
    assert band_pairs(L, w) == int(dense_band_mask(L, w).sum())


def test_useful_flops_is_4_B_H_N_d_and_three_times_that_with_backward():
    B, H, L, w, d = 2, 3, 50, 4, 8
    N = int(dense_band_mask(L, w).sum())
    assert useful_flops(B, H, L, w, d, backward=False) == 4 * B * H * N * d
    assert useful_flops(B, H, L, w, d, backward=True) == 3 * 4 * B * H * N * d


@pytest.mark.parametrize("L,w", [(1, 1), (5, 2), (40, 3), (9, 20)])
def test_dense_sdpa_prepares_the_reference_mask(L, w):
    assert torch.equal(IMPLEMENTATIONS["dense_sdpa"].prepare(L, w, None), dense_band_mask(L, w))


@pytest.mark.parametrize("L,w", [(1, 4), (10, 4), (100, 8), (1000, 256)])
def test_query_slices_cover_both_ends_and_the_middle(L, w):
    slices = query_slices(L, w)
    assert slices[0][0] == 0 and slices[-1][1] == L
    assert all(0 <= a < b <= L and b - a == min(L, 2 * w) for a, b in slices)
    middle = (L - min(L, 2 * w)) // 2
    assert any(a == middle for a, _ in slices)


def _qkv(B, L, H, d, dtype=torch.float64, grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, H, d, generator=gen, dtype=dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize("L,w", [(7, 2), (40, 3), (64, 8)])
def test_the_slice_check_accepts_a_correct_output_and_its_gradients(L, w):
    q, k, v = _qkv(2, L, 3, 4, grad=True)
    g = torch.randn(2, L, 3, 4, dtype=torch.float64)
    out = sliding_window_attention(q, k, v, w)
    out.backward(g)
    result = check(out.detach(), q, k, v, w, g)
    assert result["ok"] and result["max_rel_err"] < 1e-12


@pytest.mark.parametrize("where", [0, 20, 39])
def test_the_slice_check_catches_a_wrong_output_at_either_end_and_in_the_middle(where):
    q, k, v = _qkv(1, 40, 2, 4)
    out = sliding_window_attention(q, k, v, 3)
    out[0, where, 1, 2] += 1e-3
    assert not check(out, q, k, v, 3)["ok"]
    out[0, where, 1, 2] = float("nan")
    assert not check(out, q, k, v, 3)["ok"]


def test_the_slice_check_catches_a_wrong_gradient():
    q, k, v = _qkv(1, 40, 2, 4, grad=True)
    g = torch.randn(1, 40, 2, 4, dtype=torch.float64)
    out = sliding_window_attention(q, k, v, 3)
    out.backward(g)
    k.grad[0, 21, 0, 0] += 1e-3
    assert not check(out.detach(), q, k, v, 3, g)["ok"]


def test_the_full_attention_check_accepts_full_attention_and_its_gradients():
    """window=None: every query sees every key; the reference runs over blocks of queries."""
    q, k, v = _qkv(2, 600, 2, 4, grad=True)
    g = torch.randn(2, 600, 2, 4, dtype=torch.float64)
    out = dense_attention(q, k, v, (None, None))
    out.backward(g)
    result = check(out.detach(), q, k, v, None, g)
    assert result["ok"] and result["max_rel_err"] < 1e-12
    assert [a for a, _ in result["slices"]] == [0, 172, 344]  # 256 queries at the start, middle, end


@pytest.mark.parametrize("where", ["out", "k.grad"])
def test_the_full_attention_check_catches_a_wrong_output_or_key_gradient(where):
    q, k, v = _qkv(1, 600, 2, 4, grad=True)
    g = torch.randn(1, 600, 2, 4, dtype=torch.float64)
    out = dense_attention(q, k, v, (None, None))
    out.backward(g)
    out = out.detach()
    (out if where == "out" else k.grad)[0, 300, 1, 2] += 1e-3  # a row in the middle slice
    assert not check(out, q, k, v, None, g)["ok"]
    assert check(out, q, k, v, 8, g)["ok"] is False  # and it is no band either


def test_compare_says_when_a_difference_is_within_the_spread():
    # quartiles of [1, 2, 3, 4, 5] are 2, 3, 4; of [10, 20, 30, 40, 50] 20, 30, 40
    same = compare([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert same == {"ratio": 1.0, "low": 0.5, "high": 2.0, "within_noise": True}
    apart = compare([10, 20, 30, 40, 50], [1, 2, 3, 4, 5])
    assert apart == {"ratio": 10.0, "low": 5.0, "high": 20.0, "within_noise": False}


def _spec(impl, **kw):
    spec = dict(impl=impl, dtype="float64", mode="fwd", L=48, B=1, H=2, d=8, w=8, device="cpu", seed=0,
                threads=1, min_time=0.0, min_reps=2, loop_max_len=64)
    return {**spec, **kw}


@pytest.mark.parametrize("impl", ["dense_sdpa", "loop", "swa", "tiles"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_a_configuration_is_checked_then_timed(impl, mode):
    r = run_config(_spec(impl, mode=mode))
    assert r["status"] == "ok", r
    assert r["check"]["ok"] and r["check"]["tolerance"] == 1e-10
    assert len(r["times_s"]) >= 2 and r["median_s"] > 0 and r["iqr_s"] >= 0
    assert r["useful_flops"] == useful_flops(1, 2, 48, 8, 8, backward=mode == "fwd+bwd")


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_sdpa_without_a_mask_is_checked_as_full_attention_and_its_backend_recorded(mode):
    r = run_config(_spec("dense_sdpa_nomask", mode=mode, L=300))
    assert r["status"] == "ok", r
    assert r["check"]["ok"] and r["check"]["max_rel_err"] < 1e-10
    assert r["sdpa_backend"] in {"FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"}


def test_dense_sdpa_records_its_backend():
    r = run_config(_spec("dense_sdpa", dtype="float32"))
    assert r["status"] == "ok" and r["sdpa_backend"] in {"FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"}


def test_what_cannot_run_is_recorded_with_its_reason():
    assert run_config(_spec("loop", L=100))["status"] == "unsupported"  # past loop_max_len
    r = run_config(_spec("hf_longformer", L=40))  # not a multiple of 2w (or transformers missing)
    assert r["status"] == "unsupported" and r["reason"]


def _out_of_memory(q, k, v, w, state):
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")


def test_out_of_memory_is_a_result(monkeypatch):
    monkeypatch.setitem(IMPLEMENTATIONS, "swa", Implementation("swa", "always out of memory", attend=_out_of_memory))
    r = run_config(_spec("swa"))
    assert r["status"] == "oom" and "can't allocate memory" in r["reason"]


def test_an_isolated_process_that_runs_out_of_memory_reports_it():
    """A dense 1-head L = 8192 attention needs a 256 MiB score matrix; the process gets 64 MiB more."""
    r = run_isolated(_spec("dense_sdpa", dtype="float32", L=8192, H=1, d=4, w=4096), memory_limit_bytes=64 * 2**20)
    assert r["status"] == "oom", r


def test_a_sweep_document_has_its_schema_and_survives_json(tmp_path):
    doc = sweep(lengths=[16, 24], impls=["dense_sdpa", "swa"], dtypes=["float32"], modes=["fwd", "fwd+bwd"],
                B=1, H=2, d=4, window=4, threads=1, min_time=0.0, min_reps=2, isolate=False, peak_n=64)
    path = tmp_path / "run.json"
    write(doc, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    _assert_schema(doc)
    assert len(doc["results"]) == 8 and all(r["status"] == "ok" for r in doc["results"])
    rows = table(doc).splitlines()
    assert len(rows) == 1 + 2 * 2 + len(doc["results"]) + 1  # shape, 2 x (title, head), rows, backend
    assert max(map(len, rows)) <= 76


def test_the_table_says_why_a_configuration_was_not_timed():
    doc = sweep(lengths=[16, 40], impls=["swa", "loop"], B=1, H=1, d=4, window=4, threads=1, min_time=0.0,
                min_reps=2, loop_max_len=20, isolate=False, peak_n=64)
    text = table(doc)
    assert max(map(len, text.splitlines())) <= 76
    assert "loop (fwd, float32) at L = 40: unsupported: the loop runs only for L <= 20 (--loop-max-len)" in " ".join(text.split())


def test_the_provenance_names_the_cpu():
    info = cpu_info()
    assert info["cpu"] and isinstance(info["cpu_vector_extensions"], list)
    if Path("/proc/cpuinfo").exists():
        assert "family" in info["cpu_id"] and isinstance(info["virtual_machine"], bool)


def _assert_schema(doc):
    assert doc["schema"] == SCHEMA
    prov = doc["provenance"]
    for key in ("date_utc", "git_commit", "torch", "cuda", "device", "cpu_count", "threads", "python"):
        assert key in prov
    cfg = doc["config"]
    for key in ("device", "dtypes", "modes", "lengths", "impls", "B", "H", "d", "window"):
        assert key in cfg
    for dtype in cfg["dtypes"]:
        assert doc["peak"][dtype]["flops_per_s"] > 0 and doc["peak"][dtype]["times_s"]
    for r in doc["results"]:
        assert {"impl", "dtype", "mode", "L", "status"} <= set(r)
        if r["status"] == "ok":
            assert r["check"]["ok"] and r["times_s"] and r["median_s"] > 0
            assert r["useful_flops"] == useful_flops(cfg["B"], cfg["H"], r["L"], cfg["window"], cfg["d"], r["mode"] == "fwd+bwd")
        else:
            assert r["reason"]


def _schema_of(path):
    return json.loads(path.read_text()).get("schema")


# book/data also holds the files of other benchmarks (each checked by its own tests), told apart
# by their "schema"; the benchmarks chapter reads only this harness's files.
BENCH_FILES = [p for p in sorted(DATA.glob("*.json")) if _schema_of(p) == SCHEMA]


def test_every_committed_result_file_names_a_known_schema():
    import importlib.util

    from swa_tutorial.bench import band_layouts, bandwidth, gqa, hf_model, longformer_model, sequence_parallel
    from swa_tutorial.tutorial.experiments import sweep as receptive_field
    from swa_tutorial.tutorial.experiments import text as window_text

    spec = importlib.util.spec_from_file_location("traffic_history", DATA.parent.parent / "tools" / "traffic_history.py")
    traffic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(traffic)  # repository tooling, outside the package
    known = {SCHEMA, sequence_parallel.SCHEMA, longformer_model.SCHEMA, bandwidth.SCHEMA, traffic.SCHEMA, gqa.SCHEMA,
             hf_model.SCHEMA, band_layouts.SCHEMA, receptive_field.SCHEMA, window_text.SCHEMA}
    assert BENCH_FILES and {p.name: _schema_of(p) for p in DATA.glob("*.json") if _schema_of(p) not in known} == {}


@pytest.mark.parametrize("path", BENCH_FILES, ids=lambda p: p.name)
def test_committed_result_files_follow_the_schema(path):
    _assert_schema(json.loads(path.read_text()))


def test_gqa_benchmark_checks_every_call_and_compares_the_package_with_each_other():
    """python -m swa_tutorial.bench.gqa on a tiny configuration, in this process: every prefill and
    decoding implementation checked against float64 and timed, the ratios swa / each other; a
    wrong output fails the check (no timing is asserted)."""
    from swa_tutorial.bench import gqa

    config = dict(B=1, H=4, H_kv=2, d=8, window=[15, 0], lengths=[40], cache=50, threads=1, reps=1, min_time=0.0, seed=0)
    doc = gqa.run(config, isolate=False, progress=lambda line: None)
    expected = {("prefill", impl) for impl in gqa.PREFILL} | {("decoding", impl) for impl in gqa.DECODING}
    assert {(r["case"], r["impl"]) for r in doc["results"]} == expected
    assert all(r["status"] == "ok" and r["check"]["ok"] and r["times_s"] for r in doc["results"])
    assert {(r["case"], r["swa_over"]) for r in doc["ratios"]} == {c for c in expected if c[1] != "swa"}
    some = gqa.run({**config, "cache": 0, "impls": ["sdpa_mask_gqa"]}, isolate=False, progress=lambda line: None)
    assert [r["impl"] for r in some["results"]] == ["swa", "sdpa_mask_gqa"]
    spec = {**config, "q_len": 40, "k_len": 40}
    q, k, v = gqa.inputs(spec)
    assert not gqa.check(spec, q, k, v, torch.zeros(1, 40, 4, 8))["ok"]


GQA_FILES = [p for p in sorted(DATA.glob("*.json")) if _schema_of(p) == "swa-tutorial-gqa/1"]


@pytest.mark.parametrize("path", GQA_FILES, ids=lambda p: p.name)
def test_committed_gqa_results_were_checked_before_they_were_timed(path):
    doc = json.loads(path.read_text())
    assert doc["provenance"]["device"] and doc["results"]
    for r in doc["results"]:
        assert r["status"] != "ok" or (r["check"]["ok"] and r["times_s"] and r["memory_bytes"] is not None)


def test_the_hugging_face_layer_benchmark_checks_then_measures_and_decodes_in_turns():
    """hf_model's steps in this process on a tiny layer (its command runs each in a fresh one)."""
    pytest.importorskip("transformers")
    from swa_tutorial.bench import hf_model

    shape = dict(hf_model.SHAPE, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                 sliding_window=16)
    spec = dict(device="cpu", dtype="float32", shape=shape, L=48, reps=2, steps=2, threads=1)
    prefill = hf_model.prefill("swa_tutorial", spec)
    assert prefill["relative_error_vs_sdpa_at_512"] <= 1e-4 and len(prefill["times_s"]) == 2
    decode = hf_model.decoding(["sdpa", "swa_tutorial"], dict(spec, L=40))
    assert set(decode) == {"sdpa", "swa_tutorial"}
    assert all(r["keys_in_cache"] == 15 and len(r["times_s"]) == 2 for r in decode.values())  # W - 1 kept
    results = [{"what": "prefill", "impl": impl, "L": 48, "status": "ok", "times_s": t, "peak_bytes": b}
               for impl, t, b in (("sdpa", [1.0, 1.1, 0.9], 100), ("swa_tutorial", [0.5, 0.6, 0.4], 50))]
    ratios = hf_model.ratios(results)
    assert list(ratios) == ["prefill swa_tutorial/sdpa L=48"]
    assert ratios["prefill swa_tutorial/sdpa L=48"]["peak_memory"] == 0.5
    assert ratios["prefill swa_tutorial/sdpa L=48"]["time"]["ratio"] == 0.5


def test_device_check_passes_on_the_cpu():
    """The device check run on GPUs is the same code; here it runs on the CPU."""
    from swa_tutorial.bench.correctness import DEVICE_TOLERANCES as TOLERANCES, check_device as check

    worst = check("cpu")
    assert set(worst) == {str(t) for t in TOLERANCES}
    assert all(worst[str(t)] < tol for t, tol in TOLERANCES.items())


# ---------------------------------------------------------------------------------------------
# The command lines: python -m swa_tutorial.bench and python -m swa_tutorial.bench.correctness

TINY = ["-L", "16", "24", "-H", "1", "-d", "4", "-w", "4", "--impls", "swa", "loop", "--loop-max-len", "20",
        "--min-time", "0", "--min-reps", "2", "--in-process", "--threads", "1"]


def test_bench_help_shows_every_default_and_a_quick_configuration(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.parse_args(["--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default: cpu)", "(default: float32)", "(default: fwd)", "(default: 1024 2048 4096)",
                  "(default: 256)", "(default: 12)", "(default: 64)", "(default: 1)", "(default: 3)", "(default: 4096)",
                  "(default: 0.75)", "(default: all;", "written only with -o/--out", "A quick first run"):
        assert shown in text, shown
    defaults = cli.parse_args([])
    assert (defaults.device, defaults.dtypes, defaults.modes, defaults.lengths) == ("cpu", ["float32"], ["fwd"], [1024, 2048, 4096])
    assert (defaults.window, defaults.B, defaults.H, defaults.d, defaults.min_time, defaults.min_reps) == (256, 1, 12, 64, 1.0, 3)
    assert (defaults.loop_max_len, defaults.memory_fraction, defaults.out) == (4096, 0.75, None)


def test_bench_without_tqdm_reports_each_configuration_and_writes_no_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    monkeypatch.chdir(tmp_path)
    cli.main(TINY)
    out, err = capsys.readouterr()
    out = " ".join(out.split())
    assert "tqdm is not installed" in err
    assert "[1/4] swa L=16 float32 fwd" in err and "[4/4] loop L=24 float32 fwd" in err
    assert "loop (fwd, float32) at L = 24: unsupported: the loop runs only for L <= 20" in out
    assert "no JSON file written: pass -o FILE" in out and not list(tmp_path.iterdir())


def test_bench_writes_json_only_with_out(capsys, tmp_path):
    cli.main(TINY + ["--no-progress", "-o", str(tmp_path / "run.json")])
    assert f"results written to {tmp_path / 'run.json'}" in capsys.readouterr().out
    _assert_schema(json.loads((tmp_path / "run.json").read_text()))


def test_bench_progress_bar_names_the_configuration(capsys):
    pytest.importorskip("tqdm")
    report = cli.progress_reporter()
    report(0, 2, "flex L=4096 bfloat16 fwd")
    report(1, 2, "swa L=8192 bfloat16 fwd")
    report(2, 2, None)
    err = capsys.readouterr().err
    assert "flex L=4096 bfloat16 fwd" in err and "swa L=8192 bfloat16 fwd" in err and "2/2" in err


@pytest.mark.parametrize("command", ["bench", "correctness"])
def test_cuda_that_is_not_there_is_a_message_not_a_traceback(command, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    main = cli.main if command == "bench" else correctness.main
    with pytest.raises(SystemExit) as stop:
        main(["--device", "cuda"])
    assert stop.value.code not in (0, None)
    message = f"{stop.value.code if isinstance(stop.value.code, str) else ''}{capsys.readouterr().err}"
    assert "--device cuda: CUDA is not available" in message and "use --device cpu" in message


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "meta"])
def test_a_device_that_is_not_measured_is_refused_by_name(name):
    with pytest.raises(ValueError, match="--device"):
        resolve_device(name)


def test_device_check_help_describes_it(capsys):
    with pytest.raises(SystemExit):
        correctness.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "against float64 dense attention" in text and "the device to check: cuda, cuda:1" in text
    assert "(default: cuda)" in text
