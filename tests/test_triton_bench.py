"""The GPU run's other two steps, tried small on the CPU (Triton's interpreter, TRITON_INTERPRET=1
from conftest.py): the entry-point check of the "triton" backend and the timing race.

They are made for CUDA (book/data/gpu-run-3.sh); here they must start, check what they check
and write their files. No time is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

from swa_tutorial.bench import kernel_timing, triton_entry_check


def test_the_entry_point_check_passes_its_tiny_cases(tmp_path):
    """sliding_window_attention(backend="triton") with grouped heads, end-aligned queries,
    dilation, padding, softcap, sinks and packed documents against backend="dense" in float64."""
    path = tmp_path / "entry.json"
    assert triton_entry_check.main(["--device", "cpu", "--tiny", "--out", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert doc["ok"] and len(doc["cases"]) == len(triton_entry_check.TINY_CASES)
    assert {"dq", "dk", "dv", "dsinks"} <= set(doc["cases"][0]["errors"])


@pytest.mark.parametrize("L, left, right", [(1, 0, 0), (7, 3, 0), (9, 0, 20), (12, 4, 5), (30, 29, 29)])
def test_window_pairs_counts_the_cells_of_the_window(L, left, right):
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    assert kernel_timing.window_pairs(L, left, right) == int(((j >= i - left) & (j <= i + right)).sum())


def test_the_timing_race_runs_and_writes_its_results(tmp_path):
    """One tiny shape against SDPA with the band mask and SDPA without a window: the file holds
    the timings and their provenance, and the kernel's output is nearer the band's (the same
    attention, rounded to bfloat16) than causal attention's (every earlier key)."""
    argv = ["--device", "cpu", "--tiny", "--shapes", "mistral", "--impls", "sdpa_band", "sdpa_flash", "-L", "40"]
    assert kernel_timing.main([*argv, "--budget", "0.01", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "kernel-timing-mistral.json").read_text())
    assert doc["provenance"]["interpreted"] and doc["shape"]["H_kv"] == 2
    assert [row["mode"] for row in doc["results"]] == ["fwd", "fwd+bwd"]
    for row in doc["results"]:
        band, flash = row["implementations"]["sdpa_band"], row["implementations"]["sdpa_flash"]
        assert len(band["times_s"]) >= 3 and band["useful_tflops_per_s"] > 0
        assert band["max_abs_diff_to_triton"] < flash["max_abs_diff_to_triton"]
