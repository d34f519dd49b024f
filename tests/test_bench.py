"""The benchmark harness: its arithmetic, its correctness check, its records. No timing is asserted."""

import json
from pathlib import Path

import pytest
import torch

from swa_tutorial import band_mask, band_softmax, dense_band_mask, sliding_window_attention
from swa_tutorial.bench import IMPLEMENTATIONS, band_pairs, check, lean_band_mask, query_slices, sweep, table, useful_flops, write
from swa_tutorial.bench.implementations import Implementation
from swa_tutorial.bench.sweep import SCHEMA, run_config, run_isolated

DATA = Path(__file__).resolve().parents[1] / "book" / "data"


@pytest.mark.parametrize("L", [1, 2, 3, 7, 8, 16, 33, 100])
@pytest.mark.parametrize("w", [1, 2, 3, 5, 8, 64])
def test_band_pairs_counts_the_dense_band(L, w):
    """P = L(2w + 1) - w(w + 1) is the number of True cells of the dense band mask (L^2 if w >= L)."""
    assert band_pairs(L, w) == int(dense_band_mask(L, w).sum())


def test_useful_flops_is_4_B_H_P_d_and_three_times_that_with_backward():
    B, H, L, w, d = 2, 3, 50, 4, 8
    P = int(dense_band_mask(L, w).sum())
    assert useful_flops(B, H, L, w, d, backward=False) == 4 * B * H * P * d
    assert useful_flops(B, H, L, w, d, backward=True) == 3 * 4 * B * H * P * d


@pytest.mark.parametrize("L,w", [(1, 1), (5, 2), (40, 3), (9, 20)])
def test_lean_band_mask_equals_the_reference_mask(L, w):
    assert torch.equal(lean_band_mask(L, w), dense_band_mask(L, w))


@pytest.mark.parametrize("L,w", [(1, 4), (10, 4), (100, 8), (1000, 256)])
def test_query_slices_cover_both_ends_and_the_middle(L, w):
    slices = query_slices(L, w)
    assert slices[0][0] == 0 and slices[-1][1] == L
    assert all(0 <= a < b <= L and b - a == min(L, 2 * w) for a, b in slices)
    middle = (L - min(L, 2 * w)) // 2
    assert any(a == middle for a, _ in slices)


def test_band_softmax_may_skip_the_empty_row_pass_only_when_no_row_is_empty():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 12, 9, dtype=torch.float64)
    mask = band_mask(12, 4)[:, None]  # no key padding: every row sees itself
    assert torch.equal(band_softmax(scores, mask, every_row_has_key=True), band_softmax(scores, mask))


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
    assert len(table(doc).splitlines()) == 1 + len(doc["results"])


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


@pytest.mark.parametrize("path", sorted(DATA.glob("*.json")), ids=lambda p: p.name)
def test_committed_result_files_follow_the_schema(path):
    _assert_schema(json.loads(path.read_text()))


def test_device_check_passes_on_the_cpu():
    """The device check run on GPUs is the same code; here it runs on the CPU."""
    from swa_tutorial.bench.device_check import TOLERANCES, check

    worst = check("cpu")
    assert set(worst) == {str(t) for t in TOLERANCES}
    assert all(worst[str(t)] < tol for t, tol in TOLERANCES.items())
