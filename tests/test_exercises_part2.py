"""The exercises of Part II (chapters 12 to 19): typical wrong answers get the message that names
their mistake, and every place an exercise cites as its specification exists.

The book's solutions, the empty exercise cells and the suspects of every exercise are checked for
all chapters in tests/test_exercises.py; here, one typical wrong answer of each Part II exercise
that names a likely cause, with the exact message where its numbers are derived by hand.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from swa_tutorial.bench import compare
from swa_tutorial.tutorial.exercises import EXERCISES, diagnose
from swa_tutorial.tutorial.exercises.tiles_and_shards import _backward_with


def keys_twice(i, L, w, global_tokens):
    return sorted([*range(max(0, i - w), min(L, i + w + 1)), *global_tokens])  # a union made a concatenation


def crossover_ignoring_noise(run, dtype):
    times = {(r["impl"], r["L"]): r["times_s"] for r in run["results"] if r["dtype"] == dtype and r["status"] == "ok"}
    for L in run["config"]["lengths"]:
        pair = times.get(("dense_sdpa", L)), times.get(("swa", L))
        if None not in pair and compare(*pair)["ratio"] > 1:  # a median above 1, noise or not
            return L
    return 0


def unmasked_decode_step(q, keys, values, positions):
    return (keys @ q / q.shape[0] ** 0.5).softmax(dim=0) @ values  # the empty slots get weight


RIGHT_WINDOW_1_6 = {"w": 4, "shift": 2, "lead": 2, "padded_length": 24, "num_chunks": 5, "extra_diagonals": [-2]}

WRONG_PART2 = [
    ("window_1_6", {**RIGHT_WINDOW_1_6, "w": 3},  # ceil(7 / 2) = 4, rounded down
     'window_1_6["w"]: got 3, expected 4 (expected from shifted_layout(20, 1, 6)). Likely cause: (left + right) / 2 '
     "= 3.5 rounds up"),
    ("window_1_6", {**RIGHT_WINDOW_1_6, "padded_length": 20},  # 20 + 2 lead rows = 22, rounded up to 24
     'window_1_6["padded_length"]: got 20, expected 24 (expected from shifted_layout(20, 1, 6)). Likely cause: L '
     "itself is a multiple of w, but the lead's rows come first"),
    ("longformer_keys", keys_twice,  # token 0 is global and in its own window
     "longformer_keys(i=0, L=1, w=3, global_tokens=[0]): got [0, 0], expected 1 ints: (0,) (expected from the keys "
     "dense_longformer_attention weighs). Likely cause: a key both in the window and global is counted twice"),
    ("decode_step", unmasked_decode_step,
     "decode_step(q, keys, values, positions=[0, -1, -1]): token 0, left=2, d=2: entry [component 0]: got "),
    ("tile_backward", lambda *args: _backward_with(*args, lse_term=False),
     "tile_backward(q, k, v, allowed, out, lse, grad_out, grad_lse, scale=1): 8 queries, 8 keys, the labelled "
     "tokens, w = 2: dq: entry [query 0, component 0]: got "),
    ("kernel_products", {"tiles_visited": 9, "forward_products": 18, "backward_products": 45},  # 5 a tile, not 7
     'kernel_products["backward_products"]: got 45, expected 63 (expected from span_table(64, 20, 0, 16, 16) and the '
     "tl.dot calls of the kernels' loops). Likely cause: that is FlashAttention-2's five per tile"),
    ("sdpa_memory", {"bfloat16_mib": 3 * 65536**2 / 2**20, "float32_mib": 20672},  # the masks without the output
     'sdpa_memory["bfloat16_mib"]: got 12288 MiB, the run measured 12384 MiB (0.992 times that) (expected from the '
     "peak memory of dense_sdpa at L = 65536 in gpu-bfloat16-fwd.json). Likely cause: the masks alone"),
    ("crossover_length", crossover_ignoring_noise,  # the made-up run: a tie at 2048, a win at 4096
     "crossover_length(run, 'float32'): a tie within noise, then a win: got 2048, expected 4096 (expected from "
     "swa_tutorial.bench.compare on each length). Likely cause: a ratio above 1 whose quartile range contains 1 is "
     "a tie within noise"),
]

CAUSES = {  # where the message's beginning is not enough: the cause it must name
    "decode_step": "Likely cause: the empty slots (position -1) hold zero keys",
    "tile_backward": "Likely cause: D = dO . o - dlse",
}


@pytest.mark.parametrize("name, answer, message", WRONG_PART2, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(WRONG_PART2)])
def test_a_typical_wrong_answer_of_part_two_gets_its_specific_message(name, answer, message):
    got = diagnose(name, answer)
    assert got is not None, f"{name}: the wrong answer passed"
    assert got.startswith(message), f"\n got: {got}\nwant: {message}"
    assert CAUSES.get(name, "Likely cause") in got


# The Part II exercises whose comparison alone cannot say why an answer is wrong (a wrong entry of a
# tensor, a wrong number): each lists typical mistakes. (The others' comparisons name the reason
# themselves: the diagonal a band misses, the slot a token belongs in, the end of a halo that is off.)
NEED_SUSPECTS = ["window_1_6", "attend_by_slices", "decode_step", "longformer_keys", "merge_softmaxes",
                 "tile_backward", "kernel_products", "sdpa_memory", "crossover_length"]


@pytest.mark.parametrize("name", NEED_SUSPECTS)
def test_part_two_exercises_know_typical_mistakes(name):
    assert EXERCISES[name].suspects, f"{name}: no suspect, so check can name no likely cause"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for attribute in parts[n:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_package_name_an_exercise_cites_exists(name):
    exercise = EXERCISES[name]
    cited = set(re.findall(r"swa_tutorial(?:\.\w+)+", exercise.reference))
    cited |= {m for case in exercise.cases() for m in re.findall(r"swa_tutorial(?:\.\w+)+", case.source)}
    missing = sorted(m for m in cited if not _resolves(m))
    assert not missing, f"{name} cites {missing}, which do not exist"


def test_the_crossover_exercise_counts_only_wins_beyond_the_noise():
    """Its made-up run: a win at 1024 for dense SDPA, a tie within noise at 2048, a win at 4096."""
    case = next(iter(EXERCISES["crossover_length"].cases()))
    run, dtype = case.args
    times = {(r["impl"], r["L"]): r["times_s"] for r in run["results"]}
    assert compare(times["dense_sdpa", 2048], times["swa", 2048])["within_noise"]
    assert compare(times["dense_sdpa", 2048], times["swa", 2048])["ratio"] > 1
    assert case.expected == 4096 and not compare(times["dense_sdpa", 4096], times["swa", 4096])["within_noise"]


def test_the_api_page_lists_every_exercise():
    page = (Path(__file__).resolve().parent.parent / "book" / "api.md").read_text()
    missing = [name for name in EXERCISES if f"`{name}" not in page]
    assert not missing, f"book/api.md's table of exercises lacks {missing}"
