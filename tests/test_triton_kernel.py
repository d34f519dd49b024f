"""The fused Triton kernel (backend "triton") against the float64 dense reference.

The kernel runs on the CPU under Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py),
whose tiles are 16 x 16: the small lengths here cross several query and key tiles, and the
windows make every kind of key tile (skipped, full, partial) occur. Most cases go through
:func:`swa_tutorial.bench.triton_check.check`, the check a GPU run makes on CUDA: outputs,
log-sum-exps and the gradients of both against float64 dense attention (k and v repeated to the
query heads for grouped heads, the scores capped from the definition for a softcap); float32 and
the half types against the error of PyTorch's SDPA on the same rounded inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import swa_tutorial.backends
from cases import assert_close64
from swa_tutorial import dense_attention
from swa_tutorial.backends.triton import launcher as triton_kernel
from swa_tutorial.backends.triton.launcher import attend, launch_config
from swa_tutorial.core.tiling import key_tile_span, span_table
from swa_tutorial.bench import triton_check
from swa_tutorial.bench.triton_check import Case, PADDINGS, check, sees_a_key

BLOCK = launch_config(torch.float32, 16, 16, interpreted=True)[0]  # the interpreter's tiles (16)


def assert_ok(case: Case) -> None:
    """The case passes triton_check.check on the CPU: out, lse and gradients against float64."""
    result = check(case, "cpu")
    assert result["ok"], result


# ---------------------------------------------------------------------------------------------
# float64: outputs, lse and the gradients of both equal dense attention's within 1e-10.


@pytest.mark.triton
@pytest.mark.parametrize(
    "case",
    [
        Case(1, 1, 1, 1, 1, (0, 0)),  # L = 1
        Case(2, 16, 1, 3, 3, (2, 2)),  # exactly one tile
        Case(1, 17, 2, 20, 5, (40, 40), "tail"),  # one row past a tile; window beyond L; d not a power of 2
        Case(1, 70, 1, 32, 32, (24, 18), "random"),  # skipped, full and partial tiles
        Case(2, 64, 1, 16, 8, (0, 0), "blind_queries"),  # each query its own key only
        Case(2, 50, 2, 8, 8, (7, 0), "padded_batch_row"),  # causal
        Case(1, 45, 1, 8, 3, (0, 33)),  # anticausal
        Case(2, 33, 1, 2, 2, (32, 32), "padded_batch_row", scale=2.0),  # every key in every window
        Case(2, 40, 2, 8, 6, (5, 9), "random", layout="strided"),  # transposed q, expanded k, strided v
        # grouped heads (H_kv = 1: multi-query) and softcap, scores large enough for the cap to bend them
        Case(1, 40, 4, 8, 8, (5, 9), "random", kv_heads=1, softcap=5.0, score_std=16.0),
        Case(1, 37, 4, 16, 8, (7, 0), "tail", kv_heads=2, softcap=5.0, score_std=16.0),  # causal
        Case(1, 37, 2, 8, 8, (6, 6), "blind_queries", kv_heads=2, softcap=5.0, score_std=16.0),  # symmetric
        Case(2, 33, 2, 8, 6, (3, 30), "padded_batch_row", layout="strided", kv_heads=1),
    ],
    ids=repr,
)
def test_float64_edge_cases(case):
    assert_ok(case)


@st.composite
def problems(draw, max_len=70):
    """A float64 Case: windows of every shape, from 0 to beyond L on each side."""
    L = draw(st.one_of(st.integers(1, 2 * BLOCK), st.integers(2 * BLOCK, max_len)))
    side = st.one_of(st.just(0), st.integers(0, 20), st.integers(0, L + 5))
    left, right = draw(side), draw(side)
    shape = draw(st.sampled_from(("pair", "causal", "anticausal", "symmetric")))
    window = {"causal": (left, 0), "anticausal": (0, right), "symmetric": (left, left)}.get(shape, (left, right))
    d = draw(st.sampled_from((1, 3, 16, 20, 32)))
    heads = draw(st.integers(1, 2))
    return Case(
        batch=draw(st.integers(1, 2)),
        seq_len=L,
        heads=heads,
        kv_heads=draw(st.sampled_from((1, heads))),
        softcap=draw(st.sampled_from((0.0, 0.0, 5.0))),
        head_dim=d,
        value_dim=draw(st.sampled_from((d, 5))),
        window=window,
        padding=draw(st.sampled_from(PADDINGS)),
        layout=draw(st.sampled_from(("contiguous", "contiguous", "strided"))),
        scale=draw(st.sampled_from((None, 0.3, 2.0))),
        score_std=draw(st.sampled_from((1.0, 16.0))),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@pytest.mark.triton
@settings(max_examples=16)
@given(problems())
def test_float64_random_cases(case):
    assert_ok(case)


@pytest.mark.triton
@pytest.mark.parametrize("blocks", [(32, 16, 2, 1), (16, 32, 1, 3), (64, 16, 4, 2)])
def test_other_tile_sizes_compute_the_same_attention(blocks):
    """Launch settings other than the rule's (the tuning run's, launcher.attend(blocks=...)):
    query and key tiles of different sizes, grouped heads, a softcap and padding; out, lse and
    the gradients of q, k, v against float64 dense attention."""
    g = torch.Generator().manual_seed(sum(blocks))
    q = torch.randn(2, 70, 4, 16, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 70, 2, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = torch.rand(2, 70, generator=g) < 0.2
    out, lse = attend(q, k, v, (20, 3), mask, 0.3, 2.0, blocks=blocks)
    ref_out, ref_lse = dense_attention(q, k, v, (20, 3), key_padding_mask=mask, scale=0.3, softcap=2.0,
                                       return_lse=True)
    assert_close64(out, ref_out)
    assert torch.equal(lse.isinf(), ref_lse.isinf())
    assert_close64(lse[lse.isfinite()], ref_lse[ref_lse.isfinite()])
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64)

    def gradients(out, lse):  # a row with no key has no lse to differentiate
        return torch.autograd.grad((out * d_out).sum() + lse.masked_fill(lse.isinf(), 0.0).sum(), (q, k, v))

    got, want = gradients(out, lse), gradients(ref_out, ref_lse)
    for a, b in zip(got, want):
        assert_close64(a, b)


@pytest.mark.parametrize(
    "blocks, error, words",
    [
        ((64, 64, 4), TypeError, "four ints"),
        ((64, 64.0, 4, 2), TypeError, "four ints"),
        ((64, 8, 4, 2), ValueError, "powers of two >= 16"),
        ((48, 64, 4, 2), ValueError, "powers of two >= 16"),
        ((64, 64, 3, 2), ValueError, "num_warps must be a power of two"),
        ((64, 64, 4, 0), ValueError, "num_stages >= 1"),
    ],
)
def test_bad_launch_settings_name_what_is_wrong(blocks, error, words):
    with pytest.raises(error, match=words):
        triton_kernel.check_blocks(blocks)


@pytest.mark.triton
def test_query_with_no_key_gives_zero_output_minus_inf_lse_and_zero_gradients():
    B, L, H, d = 2, 40, 2, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, 10:30] = True  # queries 13 .. 26 of row 0 see only padding through window (3, 3)
    mask[1] = True  # batch row 1 is all padding
    out, lse = attend(q, k, v, (3, 3), mask, 0.5)
    blind = ~sees_a_key(L, (3, 3), mask).expand(B, L, H)  # B x L x H
    assert blind[0].sum() == 14 * H and blind[1].all()
    assert torch.equal(out[blind], torch.zeros_like(out[blind]))
    assert torch.equal(lse[blind], torch.full_like(lse[blind], float("-inf")))
    # an upstream gradient on every output, the blind queries' lse included (the loss is -inf)
    loss = out.sum() + (lse * torch.where(blind, 1.0, 0.5)).sum()
    dq, dk, dv = torch.autograd.grad(loss, (q, k, v))
    for grad in (dq, dk, dv):
        assert torch.isfinite(grad).all()
    assert torch.equal(dq[blind], torch.zeros_like(dq[blind]))
    assert not dk[1].any() and not dv[1].any()  # padding keys get no gradient


# ---------------------------------------------------------------------------------------------
# Which key tiles a query tile visits.


def tile_kinds(L, left, right, block_rows, block_cols):
    """From the window itself: for each (row tile, column tile) 'skipped', 'full' or 'partial'."""
    seen = torch.ones(L, L, dtype=torch.bool).tril(right).triu(-left)  # i - left <= j <= i + right
    rows, cols = -(-L // block_rows), -(-L // block_cols)
    kinds = {}
    for r in range(rows):
        for c in range(cols):
            cells = seen[r * block_rows : (r + 1) * block_rows, c * block_cols : (c + 1) * block_cols]
            inside = (c + 1) * block_cols <= L  # a tile reaching past L needs its bound masked
            kinds[r, c] = "skipped" if not cells.any() else "full" if cells.all() and inside else "partial"
    return kinds


@settings(max_examples=150)
@given(st.integers(1, 150), st.integers(0, 160), st.integers(0, 160), st.sampled_from((16, 32, 64)), st.sampled_from((16, 32, 64)))
def test_key_tile_span_visits_exactly_the_tiles_the_window_reaches(L, left, right, block_rows, block_cols):
    kinds = tile_kinds(L, left, right, block_rows, block_cols)
    for r in range(-(-L // block_rows)):
        start, full_start, full_end, end = key_tile_span(r, L, left, right, block_rows, block_cols)
        assert 0 <= start <= full_start <= full_end <= end <= -(-L // block_cols)
        for c in range(-(-L // block_cols)):
            expected = "skipped" if not start <= c < end else "full" if full_start <= c < full_end else "partial"
            assert kinds[r, c] == expected, (r, c)


def test_span_table_holds_the_spans_and_every_kind_of_tile_occurs():
    """The kernels read their loop bounds from span_table. At L = 70 the window (24, 18) of the
    float64 cases has skipped, full and partial key tiles, and so has its transpose (24, 18)
    for the dK/dV pass (rows = keys, left and right swapped)."""
    L, left, right = 70, 24, 18
    table = span_table(L, left, right, BLOCK, BLOCK, torch.device("cpu"))
    assert table.dtype == torch.int32
    assert table.tolist() == [list(key_tile_span(r, L, left, right, BLOCK, BLOCK)) for r in range(5)]
    for a, b in ((left, right), (right, left)):
        assert set(tile_kinds(L, a, b, BLOCK, BLOCK).values()) == {"skipped", "full", "partial"}


@pytest.mark.parametrize("L, left, right", [(4096, 256, 256), (4096, 512, 0), (70, 3, 40)])
def test_a_query_tile_visits_no_more_key_tiles_than_its_span_covers(L, left, right):
    """BLOCK_M queries see at most BLOCK_M + left + right keys: that many tiles, plus one for a
    span that does not start on a tile boundary. O(L (left + right)) work, not O(L^2)."""
    for block_rows, block_cols in ((64, 64), (128, 64), (16, 16)):
        for r in range(-(-L // block_rows)):
            start, _, _, end = key_tile_span(r, L, left, right, block_rows, block_cols)
            assert end - start <= -(-(block_rows + left + right) // block_cols) + 1


# ---------------------------------------------------------------------------------------------
# gradcheck, non-finite inputs.


@pytest.mark.triton
@pytest.mark.parametrize("window, padding, heads, softcap", [((2, 1), "none", 1, 0.0), ((0, 3), "tail", 2, 1.5)])
def test_gradcheck(window, padding, heads, softcap):
    """Finite differences of out and lse (lse without its -inf rows) in q, k and v; with two
    query heads reading one key/value head and a softcap small enough to bend the scores (there
    in gradcheck's fast mode, one random projection of the Jacobian, for the interpreter's sake:
    the float64 cases above compare every gradient with dense attention's)."""
    B, L, d = 1, 6, 2
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, L, h, d, generator=g, dtype=torch.float64, requires_grad=True) for h in (heads, 1, 1))
    mask = None if padding == "none" else torch.tensor([[False] * 4 + [True] * 2])

    def attention(q, k, v):
        out, lse = attend(q, k, v, window, mask, 0.8, softcap)
        return out, torch.where(torch.isinf(lse), 0.0, lse)

    assert torch.autograd.gradcheck(attention, (q, k, v), fast_mode=heads > 1)


@pytest.mark.triton
@pytest.mark.parametrize("upstream", ["constant", "squared"])
def test_a_second_derivative_raises_instead_of_dropping_the_attention_term(upstream):
    """create_graph=True gives the first derivatives unchanged; differentiating them again (a
    gradient penalty) raises and names the backends with second derivatives. "constant": the
    upstream gradient does not depend on the inputs (loss = out.sum()), where a gradient without
    a graph would have been silently taken as constant."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 20, 2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def loss():
        out, _ = attend(q, k, v, (3, 1), None, 0.5, 2.0)
        return out.sum() if upstream == "constant" else out.square().sum()

    first = torch.autograd.grad(loss(), (q, k, v))
    grads = torch.autograd.grad(loss(), (q, k, v), create_graph=True)
    for a, b in zip(grads, first):
        assert torch.equal(a, b)
    penalty = sum(x.square().sum() for x in grads)
    with pytest.raises(RuntimeError, match="backend 'triton' computes first derivatives only.*'dense' or 'chunks' or 'tiles'"):
        torch.autograd.grad(penalty, q)


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the interpreter
def test_non_finite_inputs_reach_exactly_the_rows_that_score_them():
    B, L, H, d = 1, 40, 1, 4
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64) for _ in range(3))
    q[0, 3, 0, 1] = float("nan")  # query 3
    k[0, 25, 0, 2] = float("nan")  # key 25, seen by queries 23 .. 28 through the window (3, 2)
    out, lse = attend(q, k, v, (3, 2), None, 1.0)
    ref = dense_attention(q, k, v, (3, 2), scale=1.0)
    assert torch.equal(out.isnan(), ref.isnan())
    nan_rows = out.isnan().any(dim=-1)  # B x L x H
    assert nan_rows[0, :, 0].nonzero().flatten().tolist() == [3, 23, 24, 25, 26, 27, 28]
    assert torch.equal(lse.isnan(), nan_rows)


@pytest.mark.triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # log(0), for the NaN row
def test_a_query_scoring_minus_inf_against_all_its_keys_is_nan_as_in_dense_attention():
    """-inf scores are not a missing key: query 11 sees keys 10 .. 12 only, all scored -inf, and
    its output is NaN (0 / 0) as through dense attention; the blind queries of the padding
    still give 0."""
    B, L, H, d = 1, 40, 1, 4
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(B, L, H, d, generator=g, dtype=torch.float64).abs() for _ in range(3))
    k[0, 10:13] = float("-inf")
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[0, 25:30] = True  # queries 26 .. 28 see no key
    out, lse = attend(q, k, v, (1, 1), mask, 1.0)
    ref = dense_attention(q, k, v, (1, 1), key_padding_mask=mask, scale=1.0)
    assert out.isnan().any(dim=-1)[0, :, 0].nonzero().flatten().tolist() == [11]
    assert torch.equal(out.isnan(), ref.isnan())
    assert_close64(out.nan_to_num(), ref.nan_to_num())
    assert lse[0, 26:29].isneginf().all() and lse[0, 11].isneginf()


# ---------------------------------------------------------------------------------------------
# float32, float16, bfloat16 against PyTorch's SDPA on the same rounded inputs.


@pytest.mark.triton
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize(
    "score_std, window, padding, layout, kv_heads, softcap",
    [
        (1, (9, 30), "none", "contiguous", 1, 0.0),
        (4, (20, 3), "random", "strided", 2, 5.0),
        (16, (60, 60), "tail", "contiguous", 1, 5.0),
    ],
)
def test_low_precision_error_against_sdpa(dtype, score_std, window, padding, layout, kv_heads, softcap):
    """Out (rounded to the dtype) within 1.5 times SDPA's error against float64; lse within 1.5
    times a float32 logsumexp's; gradients within 1.5 times SDPA's plus the first-order effect
    of rounding P and dS before their products (triton_check.product_rounding_bounds). With a
    softcap, which SDPA cannot apply, float32 dense attention is the yardstick (see triton_check)."""
    case = Case(1, 64, 2, 32, 32, window, padding, dtype, layout, score_std, seed=score_std, kv_heads=kv_heads, softcap=softcap)
    assert_ok(case)


@pytest.mark.triton
def test_the_gpu_check_runs_and_writes_its_results(tmp_path):
    """python -m swa_tutorial.bench.triton_check --tiny, as a GPU run makes it without --tiny."""
    path = tmp_path / "check.json"
    assert triton_check.main(["--device", "cpu", "--tiny", "--out", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert doc["ok"] and len(doc["cases"]) == len(triton_check.TINY_CASES)
    assert doc["provenance"]["interpreted"] and {"errors", "allowed"} <= set(doc["cases"][0])


def test_a_rerun_takes_the_cases_that_failed_in_earlier_files(tmp_path):
    """--failed-in: the cases whose ``ok`` was false in any of the files, matched by every field."""
    first, second, third = triton_check.GPU_CASES[:3]
    files = []
    for name, outcomes in (("a.json", [(first, False), (second, True)]), ("b.json", [(second, True), (third, False)])):
        path = tmp_path / name
        path.write_text(json.dumps({"cases": [{"case": asdict(c), "ok": ok} for c, ok in outcomes]}))
        files.append(path)
    assert triton_check.failed_in(triton_check.GPU_CASES, files) == [first, third]
    assert triton_check.failed_in(triton_check.GPU_CASES, files[:1]) == [first]


# ---------------------------------------------------------------------------------------------
# Imports and devices.


def test_importing_the_package_and_the_backend_does_not_import_triton():
    code = "import sys, swa_tutorial, swa_tutorial.backends.triton.launcher; print('triton' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_without_triton_the_error_names_the_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "swa_tutorial.backends.triton.kernels", None)  # importing it fails
    monkeypatch.delattr(swa_tutorial.backends.triton, "kernels", raising=False)
    q = torch.zeros(1, 4, 1, 2)
    with pytest.raises(RuntimeError, match="backend 'triton' needs the triton package"):
        attend(q, q, q, (1, 1), None, 1.0)


def test_cpu_tensors_need_the_interpreter():
    q = torch.zeros(1, 4, 1, 2)
    with pytest.raises(ValueError, match="backend 'triton' runs CPU tensors only under Triton's interpreter"):
        triton_kernel.check_device(q, interpreted=False)
    with pytest.raises(ValueError, match="backend 'triton' runs CUDA tensors"):
        triton_kernel.check_device(q.to("meta"), interpreted=True)


@pytest.mark.triton
def test_through_the_entry_point_with_dilation_and_padding():
    """backend="triton" from sliding_window_attention: per-head dilations (residue classes
    folded into the batch around the kernel) and key padding, against dense attention."""
    from swa_tutorial import sliding_window_attention

    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 29, 2, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 29, generator=g) < 0.25
    kwargs = dict(key_padding_mask=mask, dilation=[1, 3])
    out = sliding_window_attention(q, k, v, (2, 1), backend="triton", **kwargs)
    assert_close64(out, dense_attention(q, k, v, (2, 1), **kwargs))
