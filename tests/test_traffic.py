"""Memory traffic counted op by op, the tiles a fused pass visits, and the bandwidth benchmark."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from swa_tutorial import sliding_window_attention
from swa_tutorial.backends import chunked as chunks
from swa_tutorial.core.tiling import tile_groups
from swa_tutorial.backends import tiles
from swa_tutorial.bench import bandwidth
from swa_tutorial.tutorial.traffic import count_traffic, fused_traffic, tile_work, touched_bytes
from swa_tutorial.core.windows import window_mask

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("traffic_history", ROOT / "tools" / "traffic_history.py")
traffic_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(traffic_tool)  # repository tooling, not part of the installed package


def test_elementwise_reads_its_inputs_and_writes_its_output():
    a, b = torch.ones(10), torch.ones(10, dtype=torch.float64)
    _, ops = count_traffic(torch.add, a, b)
    assert [(o.read, o.written, o.flops) for o in ops] == [(40 + 80, 80, 0)]


def test_views_move_nothing_and_copies_move_their_bytes():
    x = torch.ones(6, 4)
    _, ops = count_traffic(lambda: (x.T, x.view(24), x[1:3], x.unsqueeze(0).expand(5, 6, 4)))
    assert ops == []
    _, ops = count_traffic(lambda: x.T.contiguous())
    assert [(o.read, o.written) for o in ops] == [(96, 96)]


def test_an_expanded_or_overlapping_view_is_read_once():
    x = torch.ones(1, 8)
    assert touched_bytes(x.expand(5, 8)) == 32
    seq = torch.arange(12.0)
    assert touched_bytes(seq.unfold(0, 4, 2)) == 48  # 5 overlapping windows of 4 over 12 numbers
    _, ops = count_traffic(lambda: x.expand(5, 8) * 2)
    assert [(o.read, o.written) for o in ops] == [(32, 160)]


def test_in_place_copy_reads_the_source_and_writes_the_destination():
    dst, src = torch.zeros(4, 8), torch.ones(4, 3)
    _, ops = count_traffic(lambda: dst[:, :3].copy_(src))
    assert [(o.op, o.read, o.written) for o in ops] == [("aten.copy_.default", 48, 48)]
    _, ops = count_traffic(lambda: dst.add_(1.0))
    assert [(o.read, o.written) for o in ops] == [(128, 128)]  # add_ reads what it overwrites


def test_matrix_products_count_two_m_n_k():
    a, b = torch.ones(3, 5, 7), torch.ones(3, 7, 2)
    _, ops = count_traffic(torch.bmm, a, b)
    assert ops[0].flops == 2 * 3 * 5 * 7 * 2
    _, ops = count_traffic(torch.mm, a[0], b[0])
    assert ops[0].flops == 2 * 5 * 7 * 2
    _, ops = count_traffic(torch.addmm, torch.ones(2), a[0], b[0])
    assert [(o.op, o.flops) for o in ops] == [("aten.addmm.default", 2 * 5 * 7 * 2)]
    _, ops = count_traffic(torch.baddbmm, torch.ones(3, 5, 2), a, b)
    assert [(o.op, o.flops) for o in ops] == [("aten.baddbmm.default", 2 * 3 * 5 * 7 * 2)]


def test_an_out_argument_is_written_not_read():
    a, out = torch.ones(4, 4), torch.empty(4, 4)
    _, ops = count_traffic(lambda: torch.mul(a, 2.0, out=out))
    assert [(o.read, o.written) for o in ops] == [(64, 64)]


def test_meta_tensors_count_what_real_tensors_count():
    shape = (2, 40, 3, 8)
    real = torch.randn(3, *shape)
    meta = torch.empty(3, *shape, device="meta")
    _, on_cpu = count_traffic(chunks.attend, *real, (4, 3), None, 0.5)
    _, on_meta = count_traffic(chunks.attend, *meta, (4, 3), None, 0.5)
    assert [(o.op, o.read, o.written, o.flops) for o in on_cpu] == [(o.op, o.read, o.written, o.flops) for o in on_meta]
    assert sum(o.flops for o in on_cpu) > 0


def test_the_tiles_backend_counts_on_meta_tensors_as_on_real_ones():
    """The tiles (a clamped start, sliding spans, a clamped end, a short last tile) count the same
    on meta tensors, and their products are those of the tiles' spans: 2 (d + d_v) per cell."""
    B, L, H, d, d_v, window = 2, 300, 3, 8, 5, (40, 25)
    real = [torch.randn(B, L, H, n) for n in (d, d, d_v)]
    meta = [torch.empty(B, L, H, n, device="meta") for n in (d, d, d_v)]
    _, on_cpu = count_traffic(sliding_window_attention, *real, window, backend="tiles")
    _, on_meta = count_traffic(sliding_window_attention, *meta, window, backend="tiles")
    assert [(o.op, o.read, o.written, o.flops) for o in on_cpu] == [(o.op, o.read, o.written, o.flops) for o in on_meta]
    groups = tile_groups(L, window, tiles.TILE_ROWS, tiles.GROUP_CELLS)
    assert {g.key_step for g in groups} == {0, groups[0].rows} and L % groups[0].rows
    cells = sum(g.tiles * g.rows * g.span for g in groups)
    assert sum(o.flops for o in on_meta) == 2 * B * H * (d + d_v) * cells


@given(st.integers(1, 90), st.integers(0, 40), st.integers(0, 40), st.sampled_from([4, 16]), st.sampled_from([4, 8, 16]))
def test_tile_work_counts_the_tiles_the_window_reaches(L, left, right, block_rows, block_cols):
    allowed = window_mask(L, (left, right))
    full = partial = keys = cells = 0
    for r in range(-(-L // block_rows)):
        rows = allowed[r * block_rows : (r + 1) * block_rows]
        for c in range(-(-L // block_cols)):
            tile = rows[:, c * block_cols : (c + 1) * block_cols]
            if tile.any():
                keys += tile.shape[1]
                cells += tile.numel()
                inside = (c + 1) * block_cols <= L
                full += bool(tile.all() and inside)
                partial += not (tile.all() and inside)
    work = tile_work(L, (left, right), block_rows, block_cols)
    total = -(-L // block_rows) * -(-L // block_cols)
    assert (work.full, work.partial, work.skipped, work.keys_loaded, work.cells) == (
        full, partial, total - full - partial, keys, cells)


def test_fused_traffic_once_and_per_tile():
    B, H, L, d, d_v = 2, 3, 100, 8, 4
    traffic = fused_traffic(B, H, L, (5, 7), d, d_v, itemsize=2, block_rows=16, block_cols=16)
    assert traffic["once"] == B * H * (L * (2 * d + 2 * d_v) * 2 + L * 4)
    keys = tile_work(L, (5, 7), 16, 16).keys_loaded
    assert traffic["tiles"] == B * H * ((L + keys) * (d + d_v) * 2 + L * 4)
    # a window over the whole sequence in one tile: each key loaded once, both models agree
    assert fused_traffic(1, 1, 16, (15, 15), d, d, 4, 16, 16) == {"tiles": 16 * 4 * d * 4 + 64, "once": 16 * 4 * d * 4 + 64}


def test_bandwidth_run_records_rates_with_provenance():
    doc = bandwidth.run("cpu", [1], size_bytes=2**20, min_time=0.01)
    assert doc["schema"] == bandwidth.SCHEMA and doc["provenance"]["threads"] == 1
    (result,) = doc["results"]
    for name, nbytes in (("copy", 2 * 2**20), ("sum", 2**20)):
        r = result[name]
        assert r["bytes"] == nbytes and r["bytes_per_s"] == pytest.approx(nbytes / r["median_s"])
        low, high = r["bytes_per_s_quartiles"]
        assert 0 < low <= r["bytes_per_s"] <= high


def chunked_product_flops(B, H, L, d, w):
    """The chunked path's two products, as Part I derives them: C = L'/w - 1 chunk products of
    2w x 2w x d and L' rows of 3w x d for P x V (L' = L rounded up to a multiple of w)."""
    Lp = -(-L // w) * w
    return 2 * B * H * d * ((Lp // w - 1) * (2 * w) ** 2 + Lp * 3 * w)


def test_the_chunked_path_counted_at_a_commit_and_here():
    """The tool counts the package of a commit (here HEAD) in a fresh process; its product FLOPs
    are Part I's, and so are those counted in this process on today's code."""
    bench = {"config": {"B": 1, "H": 2, "d": 8, "window": 4},
             "results": [{"impl": "swa", "dtype": "float32", "L": L, "mode": "fwd", "status": "ok"} for L in (16, 20)]
             + [{"impl": "swa", "dtype": "float32", "L": 24, "mode": "fwd+bwd", "status": "ok"},
                {"impl": "dense_sdpa", "dtype": "float32", "L": 16, "mode": "fwd", "status": "ok"}]}
    jobs = traffic_tool.jobs_of(bench, ("swa", "tiles"))
    assert [(j["impl"], j["L"]) for j in jobs] == [("swa", 16), ("swa", 20)]
    counts = traffic_tool.count_at("HEAD", jobs)
    for count in counts:
        assert count["flops"] == chunked_product_flops(1, 2, count["L"], 8, 4)
        assert count["read"] > 0 and count["written"] > 0
        q, k, v = torch.empty(3, 1, count["L"], 2, 8, device="meta")
        _, ops = count_traffic(sliding_window_attention, q, k, v, 4)
        assert sum(o.flops for o in ops) == count["flops"]
