"""Sequence-parallel attention: the halo plan, the cost model, and real gloo worlds of 1 to 4 processes.

The plan is checked against the window written as a dense mask (which keys each rank's queries
attend). The sharded attention runs in local gloo processes (``run_gloo``), a few worlds with many
cases each: float64 random shards, outputs and gradients against the single-device function on
the whole sequence, and the bytes each rank sent against the cost model. Bad input must raise on
every rank, with the message, within a timeout (a hang fails the test).
"""

from __future__ import annotations

import random
import time

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

from swa_tutorial import sliding_window_attention
from swa_tutorial.distributed import (all_gather_bytes, all_to_all_bytes, attend_shards, halo_bytes, halo_plan,
                                      halo_reach, ring_bytes, run_gloo, sequence_parallel_attention, shard_starts)
from swa_tutorial.core.windows import window_mask

TIMEOUT = 120  # seconds for a whole world: far above what a run takes; only a hang reaches it

# ---------------------------------------------------------------------------------------------
# The plan, against the dense mask.

sides = st.one_of(st.none(), st.integers(0, 12))
windows = st.one_of(st.integers(1, 10), st.tuples(sides, sides))
dilations = st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple))


def _needed(lengths, window, dilation) -> list[set[int]]:
    """For each rank, the keys outside its shard that some query of its shard attends (any head)."""
    starts = shard_starts(lengths)
    heads = dilation if isinstance(dilation, tuple) else (dilation,)
    attends = torch.zeros(starts[-1], starts[-1], dtype=torch.bool)
    for d in heads:
        attends |= window_mask(starts[-1], window, dilation=d)
    needed = []
    for r in range(len(lengths)):
        keys = attends[starts[r]:starts[r + 1]].any(dim=0).nonzero().flatten().tolist()
        needed.append({j for j in keys if not starts[r] <= j < starts[r + 1]})
    return needed


@given(st.lists(st.integers(0, 8), min_size=1, max_size=5), windows, dilations)
def test_plan_sends_what_the_window_needs(lengths, window, dilation):
    plan = halo_plan(lengths, window, dilation)
    starts = shard_starts(lengths)
    received = [set() for _ in lengths]
    for t in plan:
        assert t.src != t.dst and starts[t.src] <= t.start < t.stop <= starts[t.src + 1], t
        assert not received[t.dst] & set(range(t.start, t.stop)), f"{t} sends a token twice"
        received[t.dst] |= set(range(t.start, t.stop))
    assert plan == sorted(plan, key=lambda t: (t.dst, t.src))
    largest = max(dilation) if isinstance(dilation, tuple) else dilation
    for r, need in enumerate(_needed(lengths, window, dilation)):
        assert need <= received[r], f"rank {r} lacks keys {sorted(need - received[r])}"
        if lengths[r] >= largest:  # then its halo is exactly what its queries attend
            assert need == received[r], f"rank {r} gets keys it never attends: {sorted(received[r] - need)}"


def test_plan_examples():
    # 2 ranks of 4 tokens, the window (2, 1): rank 1 needs tokens 2, 3; rank 0 needs token 4
    assert [tuple(t) for t in halo_plan([4, 4], (2, 1))] == [(1, 0, 4, 5), (0, 1, 2, 4)]
    # causal: nothing from the right; wider than a shard: from two ranks
    assert [tuple(t) for t in halo_plan([2, 2, 2], (3, 0))] == [(0, 1, 0, 2), (0, 2, 1, 2), (1, 2, 2, 4)]
    assert [tuple(t) for t in halo_plan([5, 0, 5], (None, 0))] == [(0, 2, 0, 5)]  # an empty shard needs nothing
    assert halo_reach((2, None), 10, dilation=(1, 3)) == (6, 10)


# ---------------------------------------------------------------------------------------------
# The cost model, against the messages of each method counted one by one.

SIZES = {"heads": 4, "head_dim": 3, "value_dim": 5, "batch": 2, "itemsize": 2}
TOKEN = 4 * (3 + 5) * 2 * 2  # heads (d + d_v) batch itemsize: one token's keys and values


@given(st.lists(st.integers(0, 30), min_size=1, max_size=6))
def test_ring_and_all_gather_count_their_messages(lengths):
    world = len(lengths)
    ring = [0] * world
    for step in range(world - 1):  # at step s rank r sends the shard it got at step s - 1: rank r - s's
        for r in range(world):
            ring[r] += lengths[(r - step) % world] * TOKEN
    assert ring_bytes(lengths, **SIZES) == ring
    gather = [sum(lengths[r] * TOKEN for other in range(world) if other != r) for r in range(world)]
    assert all_gather_bytes(lengths, **SIZES) == gather


@given(st.lists(st.integers(0, 30), min_size=1, max_size=4))
def test_all_to_all_counts_its_messages(lengths):
    world, heads = len(lengths), 4 * 3  # 12 heads split over 1 to 4 ranks
    kept, sizes = heads // world, {**SIZES, "heads": heads}
    sent = [0] * world
    for r in range(world):
        for s in range(world):
            if s != r:  # r's tokens for s's heads (q, k, v); then r's heads' output for s's tokens
                sent[r] += lengths[r] * kept * (3 + 3 + 5) * 2 * 2 + lengths[s] * kept * 5 * 2 * 2
    assert all_to_all_bytes(lengths, **sizes) == sent
    with pytest.raises(ValueError, match="heads must be a multiple of the number of ranks"):
        all_to_all_bytes([4] * 5, **sizes)


@given(st.integers(2, 6), st.integers(0, 6), st.integers(0, 6), st.integers(1, 3))
def test_halo_in_the_middle_is_the_window(world, left, right, d):
    n = (max(left, right) + 1) * d  # shards longer than the reach
    sent = halo_bytes([n] * world, (left, right), dilation=d, **SIZES)
    expected = [(left * d * (r < world - 1) + right * d * (r > 0)) * TOKEN for r in range(world)]
    assert sent == expected
    backward = halo_bytes([n] * world, (left, right), dilation=d, backward=True, **SIZES)
    assert backward == [(right * d * (r < world - 1) + left * d * (r > 0)) * TOKEN for r in range(world)]
    flags = halo_bytes([n] * world, (left, right), dilation=d, padding=True, **SIZES)
    assert flags == [b // TOKEN * (TOKEN + 2) for b in sent]  # one byte per token and batch row


@given(st.lists(st.integers(0, 12), min_size=1, max_size=5), windows, dilations)
def test_halo_never_sends_more_than_all_gather(lengths, window, dilation):
    halo = halo_bytes(lengths, window, dilation=dilation, **SIZES)
    assert all(h <= g for h, g in zip(halo, all_gather_bytes(lengths, **SIZES)))


def test_cost_model_bad_input():
    with pytest.raises(TypeError, match="lengths must be a non-empty sequence"):
        halo_bytes([], 2, **SIZES)
    with pytest.raises(ValueError, match="each of lengths must be an int >= 0, got -1"):
        ring_bytes([3, -1], **SIZES)
    with pytest.raises(ValueError, match="itemsize must be an int >= 1"):
        all_gather_bytes([3], **{**SIZES, "itemsize": 0})


def test_needs_an_initialized_group():
    assert not dist.is_initialized()
    q = torch.zeros(1, 4, 1, 2)
    with pytest.raises(RuntimeError, match="call torch.distributed.init_process_group first"):
        sequence_parallel_attention(q, q, q, 2)


# ---------------------------------------------------------------------------------------------
# Real worlds: every case on every rank, against one process.


def _padding(case, total):
    if not case["padding"]:
        return None
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    mask = torch.rand(case["batch"], total, generator=gen) < 0.3
    mask[-1, : total // 2] = True  # a run of padding: some windows see no key at all
    return mask


def _run_cases(cases) -> list[dict]:
    """On every rank: each case's shard through sequence_parallel_attention and the whole sequence
    through sliding_window_attention; the largest difference and the bytes sent, per case."""
    rank, world = dist.get_rank(), dist.get_world_size()
    results = []
    for case in cases:
        lengths, window, dilation = case["lengths"], case["window"], case["dilation"]
        starts = shard_starts(lengths)
        B, H, d, d_v, L = case["batch"], case["heads"], case["d"], case["d_v"], starts[-1]
        gen = torch.Generator().manual_seed(case["seed"])
        dtype = case.get("dtype", torch.float64)
        q, k, v = (torch.randn(B, L, H, e, generator=gen, dtype=torch.float64).to(dtype) for e in (d, d, d_v))
        grad = torch.randn(B, L, H, d_v, generator=gen, dtype=torch.float64).to(dtype)
        padding = _padding(case, L)
        needs = case.get("grad", "qkv")
        whole = [x.clone().requires_grad_(name in needs) for name, x in zip("qkv", (q, k, v))]
        expected = sliding_window_attention(*whole, window, key_padding_mask=padding, dilation=dilation)
        expected.backward(grad)
        mine = slice(starts[rank], starts[rank + 1])
        shard = [x.detach()[:, mine].clone().requires_grad_(x.requires_grad) for x in whole]
        shard_padding = None if padding is None else padding[:, mine]
        if shard_padding is not None and not shard_padding.any() and rank % 2:
            shard_padding = None  # some ranks without a mask while others have one
        stats = {}
        out = sequence_parallel_attention(*shard, window, key_padding_mask=shard_padding, dilation=dilation,
                                          stats=stats)
        out.backward(grad[:, mine])
        pairs = [(out.detach(), expected.detach()[:, mine])]
        pairs += [(s.grad, w.grad[:, mine]) for s, w in zip(shard, whole) if w.requires_grad]
        assert all(a.shape == b.shape for a, b in pairs)
        error = max([float((a - b).abs().max()) for a, b in pairs if a.numel()], default=0.0)
        error /= max([1.0] + [float(b.abs().max()) for a, b in pairs if a.numel()])  # relative to the largest
        results.append({"error": error, "equal": all(torch.equal(a, b) for a, b in pairs),
                        "out_shape": tuple(out.shape), **stats})
    return results


def _random_cases(world, count, seed):
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        heads = rng.randint(1, 3)
        left, right = rng.choice([(rng.randint(0, 6), rng.randint(0, 6)), (rng.randint(1, 9), 0),
                                  (rng.randint(0, 3), None), (None, rng.randint(0, 2))])
        dilation = rng.choice([1, 2, 3, tuple(rng.randint(1, 3) for _ in range(heads))])
        cases.append({"lengths": [rng.randint(0 if i % 3 == 0 else 1, 9) for _ in range(world)],
                      "window": (left, right), "dilation": dilation, "batch": rng.randint(1, 2),
                      "heads": heads, "d": rng.choice([1, 2, 5]), "d_v": rng.choice([1, 3]),
                      "padding": rng.random() < 0.5, "seed": seed * 100 + i})
    return cases


def _fixed_cases(world):
    base = {"batch": 2, "heads": 2, "d": 4, "d_v": 3, "dilation": 1, "padding": False, "seed": world}
    return [
        {**base, "lengths": [6] * world, "window": 2},  # equal shards, symmetric window
        {**base, "lengths": [3, 7, 2, 5][:world], "window": (5, 1)},  # unequal, wider than a shard
        {**base, "lengths": [4] * world, "window": (9, 0)},  # causal, over several ranks
        {**base, "lengths": [5, 4, 6, 3][:world], "window": (0, 3), "padding": True},  # right only
        {**base, "lengths": [8, 3, 9, 4][:world], "window": (2, 1), "dilation": (1, 3)},  # per-head
        {**base, "lengths": [6, 0, 5, 0][:world], "window": (3, 3), "padding": True},  # empty shards
        {**base, "lengths": [5] * world, "window": (None, 0)},  # causal attention: the whole prefix
        {**base, "lengths": [5] * world, "window": 2, "grad": "q"},  # keys and values without grad
        {**base, "lengths": [4] * world, "window": 3, "d": 0},  # d = 0: each query averages its window
        {**base, "lengths": [7, 5, 6, 4][:world], "window": (3, 2), "padding": True, "dtype": torch.float32},
        {**base, "lengths": [7, 5, 6, 4][:world], "window": (3, 2), "dtype": torch.bfloat16},
    ]


def _sizes(case):
    return {"heads": case["heads"], "head_dim": case["d"], "value_dim": case["d_v"], "batch": case["batch"],
            "itemsize": torch.empty(0, dtype=case.get("dtype", torch.float64)).element_size()}


@pytest.mark.parametrize("world, count", [(2, 10), (3, 8), (4, 8)])
def test_world_equals_one_process(world, count):
    cases = _fixed_cases(world) + _random_cases(world, count, seed=world)
    started = time.monotonic()
    by_rank = run_gloo(_run_cases, world, cases, timeout=TIMEOUT)
    for i, case in enumerate(cases):
        padded = case["padding"]
        lengths = case["lengths"]
        grads = "k" in case.get("grad", "qkv")
        model = halo_bytes(lengths, case["window"], dilation=case["dilation"], padding=padded, **_sizes(case))
        back = halo_bytes(lengths, case["window"], dilation=case["dilation"], backward=True, **_sizes(case))
        for rank, results in enumerate(by_rank):
            got = results[i]
            tolerance = {torch.float32: 1e-5, torch.bfloat16: 2e-2}.get(case.get("dtype"), 1e-12)
            assert got["error"] < tolerance, f"case {case}: rank {rank} differs by {got['error']:.2e}"
            assert got["out_shape"][1] == lengths[rank]
            assert got["forward_bytes"] == model[rank], f"case {case}: rank {rank} sent {got['forward_bytes']}"
            assert got["backward_bytes"] == (back[rank] if grads else 0), f"case {case}: rank {rank} backward"
            assert got["metadata_bytes"] == 14 * 8
    print(f"{world} ranks, {len(cases)} cases: {time.monotonic() - started:.1f} s")


def test_one_rank_is_the_single_device_function_exactly():
    cases = [{**c, "lengths": [c["lengths"][0]]} for c in _fixed_cases(1)] + _random_cases(1, 6, seed=9)
    (results,) = run_gloo(_run_cases, 1, cases, timeout=TIMEOUT)
    for case, got in zip(cases, results):
        assert got["equal"], f"case {case}: one rank differs from sliding_window_attention"
        assert got["forward_bytes"] == got["backward_bytes"] == 0


# ---------------------------------------------------------------------------------------------
# Bad input: every rank raises, with the message, before any data moves.


def _bad_cases() -> list[tuple[str, str]]:
    """On every rank: each bad call's (error type, message), or ("", "") if it did not raise;
    then one good call, to show the group is still in step."""
    rank = dist.get_rank()

    def shard(n=4, B=2, H=2, d=3, d_v=3, dtype=torch.float64):
        return (torch.randn(B, n, H, d, dtype=dtype), torch.randn(B, n, H, d, dtype=dtype),
                torch.randn(B, n, H, d_v, dtype=dtype))

    bad = {  # each: this rank's arguments
        "heads": lambda: (shard(H=3 if rank == 1 else 2), {}),
        "batch": lambda: (shard(B=1 if rank == 2 else 2), {}),
        "head_dim": lambda: (shard(d=4 if rank == 0 else 3), {}),
        "value_dim": lambda: (shard(d_v=5 if rank == 1 else 3), {}),
        "dtype": lambda: (shard(dtype=torch.float32 if rank == 2 else torch.float64), {}),
        "mask": lambda: (shard(), {"key_padding_mask": torch.zeros(2, 3 if rank == 0 else 4, dtype=torch.bool)}),
        "window": lambda: (shard(), {"window": 3 if rank == 1 else 2}),
        "dilation": lambda: (shard(), {"dilation": 2 if rank == 2 else 1}),
        "grad": lambda: (tuple(x.requires_grad_(rank == 0) for x in shard()), {}),
        "not a tensor": lambda: ((("q" if rank == 1 else shard()[0]),) + shard()[1:], {}),
    }
    outcomes = []
    for name, make in bad.items():
        (q, k, v), kwargs = make()
        window = kwargs.pop("window", 2)
        try:
            sequence_parallel_attention(q, k, v, window, **kwargs)
            outcomes.append(("", ""))
        except (TypeError, ValueError) as error:
            outcomes.append((type(error).__name__, str(error)))
    try:  # the whole-problem helper: lengths that do not fit the world
        attend_shards(*shard(), 2, [4])
        outcomes.append(("", ""))
    except ValueError as error:
        outcomes.append((type(error).__name__, str(error)))
    q, k, v = shard()
    assert sequence_parallel_attention(q, k, v, 2).shape == (2, 4, 2, 3)
    return outcomes


BAD = [  # (what, the words every rank's message holds, the bad rank's own error type)
    ("heads", "the number of heads H of q, k and v must be the same on every rank of the group, got 2 on ranks 0, 2; 3 on rank 1", None),
    ("batch", "the batch size B of q, k and v must be the same on every rank of the group, got 2 on ranks 0, 1; 1 on rank 2", None),
    ("head_dim", "the head dim d of q and k must be the same on every rank of the group, got 4 on rank 0; 3 on ranks 1, 2", None),
    ("value_dim", "the value dim d_v of v must be the same on every rank of the group, got 3 on ranks 0, 2; 5 on rank 1", None),
    ("dtype", "the dtype of q, k and v must be the same on every rank of the group, got float64 on ranks 0, 1; float32 on rank 2", None),
    ("mask", "bad input on rank 0: key_padding_mask must have shape [B, L] = [2, 4], got [2, 3]", "ValueError"),
    ("window", "window's left side must be the same on every rank of the group, got 2 on ranks 0, 2; 3 on rank 1", None),
    ("dilation", "dilation must be the same on every rank of the group", None),
    ("grad", "whether k or v requires grad (the backward exchanges halo gradients on every rank) must be the same", None),
    ("not a tensor", "bad input on rank 1: q must be a torch.Tensor of shape [B, L, H, d], got str", "TypeError"),
    ("attend_shards", "lengths must hold one shard length per rank (3) summing to L = 4, got [4]", None),
]


def test_bad_input_fails_on_every_rank():
    by_rank = run_gloo(_bad_cases, 3, timeout=TIMEOUT)
    for i, (what, words, own_type) in enumerate(BAD):
        for rank, outcomes in enumerate(by_rank):
            kind, message = outcomes[i]
            assert kind, f"{what}: rank {rank} did not raise"
            assert words in message, (what, rank, message)
            assert message.startswith("sequence_parallel_attention: ") or what == "attend_shards", message
            bad_rank = {"mask": 0, "not a tensor": 1}.get(what)
            assert kind == (own_type if rank == bad_rank else "ValueError"), (what, rank, kind)


# ---------------------------------------------------------------------------------------------
# The launcher itself.


def _raise_on_rank_one():
    if dist.get_rank() == 1:
        raise KeyError("rank one fails")
    return dist.get_rank()


def _sleep():
    time.sleep(30)


def test_run_gloo_reports_errors_and_hangs():
    assert run_gloo(dist.get_rank, 2, timeout=TIMEOUT) == [0, 1]
    with pytest.raises(RuntimeError, match="rank 1 raised:(.|\n)*KeyError: 'rank one fails'"):
        run_gloo(_raise_on_rank_one, 2, timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"rank\(s\) \[0\] did not finish within 2 s"):
        run_gloo(_sleep, 1, timeout=2)
    assert time.monotonic() - started < 20


def test_benchmark_counts_the_bytes_of_the_model():
    """The benchmark's messages, for every method, send what the cost model says (it raises if not)."""
    from swa_tutorial.bench.sequence_parallel import run

    doc = run([2, 4], [8], (3, 2), heads=4, head_dim=2, reps=1, commit="test")
    assert [(r["world"], r["tokens_per_rank"]) for r in doc["results"]] == [(2, 8), (4, 8)]
    for result in doc["results"]:
        assert result["max_abs_error"] < 1e-5
        assert set(result["times"]) == {"halo", "attention", "sequence_parallel", "halo_messages", "ring",
                                        "all_gather", "all_to_all"}
