"""The GPU run's other steps, tried small on the CPU (Triton's interpreter, TRITON_INTERPRET=1
from conftest.py): the entry-point check of the "triton" backend, the timing race and the
tuning of the kernel's launch settings.

They are made for CUDA (book/data/gpu-run-3.sh); here they must start, check what they check
and write their files. No time is asserted.
"""

from __future__ import annotations

import json

import pytest
import torch

from swa_tutorial.bench import kernel_timing, kernel_tuning, triton_entry_check


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


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # a CPU, on purpose
def test_the_tuning_run_checks_times_and_ranks_every_setting(tmp_path):
    """Every tiny setting is checked against the rule's on the same inputs (other tiles round
    elsewhere, within the tolerance), timed in both modes and compared with the rule's time and
    FlexAttention's (forward only on a CPU: FlexAttention has no backward there, an error kept
    in the file); the fastest setting that passed is named."""
    argv = ["--device", "cpu", "--tiny", "--shapes", "mistral", "-L", "24", "--budget", "0.01"]
    assert kernel_tuning.main([*argv, "--out", str(tmp_path / "new")]) == 0
    doc = json.loads((tmp_path / "new" / "kernel-tuning-mistral.json").read_text())
    assert doc["provenance"]["interpreted"] and doc["rule"] == [16, 16, 1, 1] and doc["shape"]["H_kv"] == 2
    assert [row["mode"] for row in doc["results"]] == ["fwd", "fwd+bwd"]
    for row in doc["results"]:
        assert [c["label"] for c in row["configs"]] == [kernel_tuning.label(b) for b in kernel_tuning.TINY_CONFIGS]
        for config in row["configs"]:
            assert config["ok"] and config["max_relative_difference"] <= kernel_tuning.CHECK_TOLERANCE
            assert len(config["times_s"]) >= 3 and config["useful_tflops_per_s"] > 0
            assert ("over_flex" in config) == (row["mode"] == "fwd")
        rule = row["configs"][0]
        assert rule["max_relative_difference"] == 0 and rule["over_rule"]["ratio"] == 1
        assert row["best"] == min(row["configs"], key=lambda c: c["median_s"])["label"]
    assert "error" in doc["results"][1]["flex"]
