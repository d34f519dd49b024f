"""The receptive-field experiments: the task, the reach theory, the model's causality and reach,
a short training that learns, and the stored result files' schema. (The chapter's exercise is
tested with the book's others, in tests/test_exercises.py.)"""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

from swa_tutorial.tutorial.experiments import reach, sweep, text
from swa_tutorial.tutorial.experiments.model import (
    WindowedTransformer,
    windowed_attention,
)
from swa_tutorial.tutorial.experiments.task import (
    IGNORE,
    Task,
    probe_batch,
    training_batch,
)
from swa_tutorial.tutorial.experiments.training import Run, accuracy, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "book" / "data"


# --- the task -----------------------------------------------------------------------------------


def test_training_batches_are_seeded():
    task = Task(values=8, seq_len=32)
    a = training_batch(task, 4, torch.Generator().manual_seed(5))
    b = training_batch(task, 4, torch.Generator().manual_seed(5))
    c = training_batch(task, 4, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_training_labels_are_the_marked_value_from_the_mark_on():
    task = Task(values=8, seq_len=40)
    tokens, labels = training_batch(task, 64, torch.Generator().manual_seed(0))
    assert (tokens[:, 0] == task.bos).all() and (tokens[:, 1:] < 2 * task.values).all()
    for row, row_labels in zip(tokens, labels):
        marks = (row >= task.values) & (row != task.bos)
        assert marks.sum() == 1  # exactly one marked token
        m = int(marks.nonzero())
        assert (row_labels[:m] == IGNORE).all()
        assert (row_labels[m:] == row[m] - task.values).all()


@pytest.mark.parametrize("distance", [0, 1, 7, 30])
def test_probe_puts_the_answer_distance_back_from_the_last_token(distance):
    task = Task(values=8, seq_len=32)
    tokens, answers = probe_batch(task, distance, 16, torch.Generator().manual_seed(distance))
    marked = (tokens >= task.values) & (tokens != task.bos)
    assert (marked.sum(dim=1) == 1).all()
    assert (marked[:, task.seq_len - 1 - distance]).all()
    assert torch.equal(tokens[:, task.seq_len - 1 - distance] - task.values, answers)


def test_chance_level_and_bad_arguments():
    task = Task(values=16, seq_len=256)
    assert task.chance == 1 / 16 and task.vocab == 33 and task.max_distance == 254
    with pytest.raises(ValueError, match="distance"):
        probe_batch(task, 255, 1, torch.Generator())
    with pytest.raises(ValueError, match="values"):
        Task(values=1)
    with pytest.raises(TypeError, match="seq_len"):
        Task(seq_len=3.0)


# --- the reach theory ---------------------------------------------------------------------------


def test_reach_without_dilation_is_layers_times_window():
    for windows in ([8], [8, 8], [3, 5, 2], [0, 4]):
        assert reach.reachable_distances(windows) == list(range(sum(windows) + 1))


def test_reach_with_dilation_by_hand():
    assert reach.reachable_distances([2], [2]) == [0, 2, 4]  # one head, dilation 2: even only
    assert reach.reachable_distances([3], [[1, 2]]) == [0, 1, 2, 3, 4, 6]
    # two such layers: {0..3, 4, 6} + {0..3, 4, 6}: every distance to 9, then 10 and 12
    assert reach.reachable_distances([3, 3], [[1, 2], [1, 2]]) == [*range(10), 10, 12]
    assert reach.covered([8] * 4, [[1, 1, 2, 2]] * 4) == 7 * 8  # (2n - 1) w
    assert reach.farthest([8] * 4, [[1, 1, 2, 2]] * 4) == 8 * 8  # 2 n w


def _model(layers, window, dilation=1, global_token=None, vocab=11) -> WindowedTransformer:
    torch.manual_seed(0)
    heads = len(dilation) if isinstance(dilation, list) else 2
    return WindowedTransformer(vocab, 5, layers=layers, window=window, dilation=dilation,
                               global_token=global_token, d_model=8 * heads, heads=heads).double().eval()


def _changed_at(model, tokens, position, vocab=11) -> torch.Tensor:
    """bool [L]: the positions whose output changes when the token at ``position`` changes."""
    other = tokens.clone()
    other[0, position] = (tokens[0, position] + 1) % vocab
    with torch.no_grad():
        return (model(tokens)[0] != model(other)[0]).any(dim=-1)


CASES = [(1, 3, 1, None), (2, 2, 1, None), (2, 3, [1, 2], None), (1, 3, 1, "first"), (1, 3, 1, "last"),
         (2, 2, [1, 2], "first"), (2, 2, [2, 1], "last")]


@pytest.mark.parametrize("layers, window, dilation, global_token", CASES)
def test_no_output_depends_on_a_later_token(layers, window, dilation, global_token):
    model = _model(layers, window, dilation, global_token)
    tokens = torch.randint(0, 11, (1, 17), generator=torch.Generator().manual_seed(1))
    for position in range(17):
        changed = _changed_at(model, tokens, position)
        assert not changed[:position].any(), f"token {position} changed outputs {changed[:position].nonzero()}"


@pytest.mark.parametrize("layers, window, dilation, global_token", CASES)
def test_the_last_output_sees_exactly_the_reachable_distances(layers, window, dilation, global_token):
    """The reach theory against the model: the last output changes with the token D back iff D is
    reachable (every distance with a global last token; token 0 counts as BOS for "first", a
    global token that carries nothing, so it is excluded there)."""
    model = _model(layers, window, dilation, global_token)
    L = 17
    tokens = torch.randint(0, 11, (1, L), generator=torch.Generator().manual_seed(2))
    theory = set(reach.reachable_distances([window] * layers, [dilation] * layers))
    for distance in range(L - (global_token == "first")):
        sees = bool(_changed_at(model, tokens, L - 1 - distance)[-1])
        assert sees == (global_token == "last" or distance in theory), distance


@pytest.mark.parametrize("global_token", [None, "first", "last"])
@pytest.mark.parametrize("dilation", [1, [1, 2, 3]])
def test_windowed_attention_equals_dense_attention_with_the_causal_mask(global_token, dilation):
    B, L, H, d, left = 2, 13, 3, 4, 2
    q, k, v = torch.randn(3, B, L, H, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    dilations = torch.tensor(dilation if isinstance(dilation, list) else [dilation] * H)[:, None, None]
    allowed = (i - j >= 0) & (i - j <= left * dilations) & ((i - j) % dilations == 0)  # [H, L, L]
    if global_token == "first":
        allowed = allowed | ((j == 0) & (i >= 0))  # every query sees token 0; token 0 only itself
    if global_token == "last":
        allowed = allowed | ((i == L - 1) & (j <= i))  # the last query sees every (earlier) key
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / d**0.5
    expected = torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v)
    got = windowed_attention(q, k, v, left, dilation, global_token)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_bad_global_token():
    with pytest.raises(ValueError, match="global_token"):
        WindowedTransformer(5, 2, layers=1, window=1, global_token="middle")


# --- training -----------------------------------------------------------------------------------


def test_a_short_training_learns_distances_inside_the_window():
    """One layer, w = 8: after 120 steps the mark 3 back is found far above chance (1/8), and
    the mark 12 back, out of reach, is not."""
    torch.set_num_threads(1)
    task = Task(values=8, seq_len=64)
    trained = train(Run(layers=1, window=8, steps=120, batch=16), task)
    assert trained.seq_len == 64
    near = accuracy(trained.model, task, 3, 256, seed=0)
    far = accuracy(trained.model, task, 12, 256, seed=0)
    assert near > 0.8, near
    assert far < 0.25, far


# --- the stored results -------------------------------------------------------------------------

ROW_FIELDS = {"layers": int, "window": int, "global": bool, "distance": int, "seed": int, "accuracy": float,
              "steps": int, "seconds": float}


def test_the_sweep_file_has_every_field_the_chapter_reads():
    result = json.loads((DATA / "receptive-field.json").read_text())
    assert result["schema"] == sweep.SCHEMA
    assert result["command"].startswith("python -m swa_tutorial.tutorial.experiments.sweep")
    for key in ("git_commit", "cpu", "cpu_count", "torch", "threads"):
        assert result["provenance"][key] is not None, key
    assert result["task"]["chance"] == 1 / result["task"]["values"]
    for row in result["rows"]:
        for key, kind in ROW_FIELDS.items():
            assert isinstance(row[key], kind), (key, row)
        dilation = row["dilation"]
        assert (isinstance(dilation, int) and dilation >= 1) or all(isinstance(d, int) for d in dilation), row
        assert row["global"] == (row["global_token"] is not None)
        assert 0 <= row["accuracy"] <= 1 and 1 <= row["distance"] <= result["task"]["seq_len"] - 2
    assert {r["seed"] for r in result["rows"]} >= {0, 1}
    plain = {(r["layers"], r["window"]) for r in result["rows"] if r["dilation"] == 1 and not r["global"]}
    assert plain == {(n, w) for n in (1, 2, 4) for w in (8, 16, 32)}


def test_the_text_file_names_its_text_and_has_a_row_per_window_and_seed():
    result = json.loads((DATA / "window-text.json").read_text())
    assert result["schema"] == text.SCHEMA
    about = result["text"]
    assert about["train_bytes"] == sum(f["bytes"] for f in about["files"] if not f["validation"])
    assert about["validation_bytes"] == sum(f["bytes"] for f in about["files"] if f["validation"])
    pairs = {(r["window"], r["seed"]) for r in result["rows"]}
    assert len(pairs) == len(result["rows"]) and len({r["steps"] for r in result["rows"]}) == 1
    assert all(r["validation_bits_per_byte"] > 0 for r in result["rows"])


# --- the commands, on a tiny budget --------------------------------------------------------------


def test_the_sweep_measures_a_run_at_both_sides_of_its_boundaries():
    """Two steps of training: the rows' fields and distances, not the accuracy."""
    run, task = Run(layers=2, window=4, dilation=(1, 2), steps=2, heads=2), Task()
    rows = sweep.measure(run, task, examples=4)
    distances = [r["distance"] for r in rows]
    assert distances == sweep.distances(run, task)
    # one before to two after layers x w = 8, the gap-free reach 12 and the farthest 16 (4 x 2 a layer)
    assert set(range(7, 19)) <= set(distances)
    for row in rows:
        for key, kind in ROW_FIELDS.items():
            assert isinstance(row[key], kind), (key, row)
        assert row["reachable"] == (row["distance"] in set(reach.reachable_distances([4, 4], [[1, 2]] * 2)))


def test_the_text_command_writes_its_file(tmp_path):
    out = tmp_path / "text.json"
    text.main(["-o", str(out), "--steps", "2", "--seeds", "0", "--windows", "1", "3"])
    result = json.loads(out.read_text())
    assert result["schema"] == text.SCHEMA and result["training"]["steps"] == 2
    assert [(r["window"], r["seed"]) for r in result["rows"]] == [(1, 0), (3, 0)]
    assert all(r["validation_bits_per_byte"] > 0 for r in result["rows"])
