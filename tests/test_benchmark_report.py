"""The tables the book prints from the Triton kernel's GPU files, on small made-up files: what
they say follows from the numbers put in, and the committed files read without error."""

from __future__ import annotations

from pathlib import Path

import pytest

from swa_tutorial.bench import compare, useful_flops
from swa_tutorial.tutorial.benchmark_report import (check_failures, kernel_race_table,
                                                    kernel_rate_table, load_json)

GPU3 = Path(__file__).resolve().parent.parent / "book" / "data" / "gpu-2026-12-04"
CASE = {"batch": 1, "seq_len": 1, "heads": 1, "head_dim": 64, "value_dim": 64, "window": [0, 0],
        "padding": "none", "dtype": "float16", "layout": "contiguous", "kv_heads": None, "softcap": 0.0}


def test_check_failures_names_each_quantity_over_its_allowance():
    """Passed cases are left out; a failed one lists only what is over, as error / allowance,
    or the error itself where the allowance is 0; a case that raised gives its error."""
    over = {"case": CASE, "ok": False, "errors": {"out": 1.0, "dq": 3.0, "dk": 2e-7},
            "allowed": {"out": 2.0, "dq": 2.0, "dk": 0.0}}
    raised = {"case": {**CASE, "dtype": "float64"}, "ok": False, "error": "RuntimeError: boom"}
    passed = {"case": CASE, "ok": True, "errors": {"out": 0.0}, "allowed": {"out": 1.0}}
    lines = check_failures({"cases": [over, raised, passed]})
    assert lines == ["float16 L=1 H=1 d=64 (0, 0) none: dq 1.50x, dk 2.0e-07 over 0",
                     "float64 L=1 H=1 d=64 (0, 0) none: raised RuntimeError: boom"]


def test_kernel_tables_print_the_files_medians_ratios_and_rates():
    """The race table's ratio is the file's compare(); the rate table divides the useful work by
    the median and by the run's peak."""
    triton, flex = [2e-3, 2.2e-3, 1.8e-3], [1e-3, 1.1e-3, 0.9e-3]
    work = useful_flops(1, 2, 1024, 16, 8, backward=False)
    timed = {"triton": {"median_s": 2e-3, "iqr_s": 2e-4, "times_s": triton,
                        "useful_tflops_per_s": work / 2e-3 / 1e12, "fraction_of_matmul_peak": 0.5},
             "flex": {"median_s": 1e-3, "iqr_s": 1e-4, "times_s": flex,
                      "useful_tflops_per_s": work / 1e-3 / 1e12, "fraction_of_matmul_peak": 1.0}}
    run = {"results": [{"seq_len": 1024, "mode": "fwd", "useful_flops": work, "implementations": timed,
                        "triton_over_flex": compare(triton, flex)}]}
    row = kernel_race_table(run).splitlines()[1].split()
    assert row[:6] == ["1K", "fwd", "2.00", "(0.20)", "1.00", "(0.10)"]
    assert row[6] == f"{compare(triton, flex)['ratio']:.2f}"
    rates = kernel_rate_table(run, ("triton", "flex")).splitlines()[1].split()
    assert rates[2:] == [f"{work / 2e-3 / 1e12:.0f}", "(50%)", f"{work / 1e-3 / 1e12:.0f}", "(100%)"]


@pytest.mark.parametrize("shape", ["book", "mistral"])
def test_the_committed_race_files_read_as_tables(shape):
    run = load_json(GPU3 / f"kernel-timing-{shape}.json")
    assert len(kernel_race_table(run).splitlines()) == 1 + len(run["results"])
    assert len(kernel_rate_table(run).splitlines()) == 1 + len(run["results"])
