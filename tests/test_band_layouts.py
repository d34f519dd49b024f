"""The three layouts of the band that the whole-layer chapter times: the same band, the work counted
from the tensors, and the record the benchmark writes. No timing is asserted."""

import json

import pytest
import torch

from swa_tutorial import dense_band_mask, dense_to_band
from swa_tutorial.bench import band_layouts
from swa_tutorial.bench.band_layouts import LAYOUTS, SCHEMA, work_ratio
from swa_tutorial.steps.chunks import chunk, chunk_scores
from swa_tutorial.steps.values import value_chunks


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("L, w", [(8, 2), (16, 2), (48, 4), (64, 16), (12, 6)])
def test_every_layout_gives_the_dense_band(name, L, w):
    """Inside the band each layout holds q_i . k_(i + t - w) (float64); the corners may hold anything."""
    q, k = torch.randn(2, 3, L, 8, dtype=torch.float64)
    band = LAYOUTS[name](q, k, w)
    dense = torch.einsum("rid,rjd->rij", q, k).masked_fill(~dense_band_mask(L, w), 0)
    inside = dense_to_band(dense_band_mask(L, w).double(), w).bool()
    torch.testing.assert_close(band.masked_fill(~inside, 0), dense_to_band(dense, w))


@pytest.mark.parametrize("L, w", [(32, 2), (2048, 16), (2048, 64), (2048, 256)])
def test_work_ratio_is_the_ratio_of_the_products_as_the_tensors_count_them(L, w):
    """3wL / 4w^2 C from the shapes: the blocks' w x 3w scores against the chunks' 2w x 2w."""
    x = torch.zeros(1, L, 1, device="meta")
    chunks = chunk_scores(chunk(x, w), chunk(x, w)).numel()  # C (2w)^2
    blocks = value_chunks(x, w).shape[1] * w * 3 * w  # L/w blocks of w x 3w
    assert work_ratio(L, w) == pytest.approx(blocks / chunks)


def test_the_work_ratios_the_chapter_quotes():
    assert [round(work_ratio(2048, w), 3) for w in (16, 64, 256)] == [0.756, 0.774, 0.857]


def test_a_run_records_every_layout_and_round_with_its_provenance(tmp_path):
    out = tmp_path / "layouts.json"
    band_layouts.main(["--bh", "1", "-L", "32", "-d", "4", "--windows", "2", "4", "--rounds", "2",
                       "--min-time", "0.001", "-o", str(out)])
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA
    assert doc["provenance"]["threads"] == 1 and "cpu" in doc["provenance"]
    assert [(r["window"], r["layout"]) for r in doc["results"]] == [(w, n) for w in (2, 4) for n in LAYOUTS]
    for r in doc["results"]:
        assert len(r["times_s"]) == len(r["ratio_to_chunks"]["per_round"]) == 2
        if r["layout"] == "2w chunks":
            assert r["ratio_to_chunks"]["per_round"] == [1.0, 1.0]


def test_a_length_the_window_does_not_divide_is_a_value_error():
    with pytest.raises(ValueError, match="seq_len must be a multiple of window"):
        band_layouts.measure(1, 30, 4, 4, rounds=1, min_time=0.001)
