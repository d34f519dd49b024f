"""Second derivatives across ranks: the halo exchange's backward is itself differentiable.

A gradient penalty (a function of the first gradients) and a Hessian-vector product need the
backward's graph. On one process that is autograd's business; across ranks the backward of the
halo exchange sends each halo gradient back to its owner, and the second backward must send the
gradient of that gradient forward again. Each case runs in 2 and 3 gloo processes, float64, and
is compared with the single-device function on the whole sequence: the first gradients (taken
with ``create_graph=True``) and the gradients of a penalty built from them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from swa_tutorial import sliding_window_attention
from swa_tutorial.distributed import exchange_halo, run_gloo, sequence_parallel_attention, shard_starts

TIMEOUT = 120  # seconds for a whole world: only a hang reaches it


def _penalty(grads, weights):
    """A scalar of the first gradients, linear (a Hessian-vector product) and quadratic (a
    gradient penalty) in them."""
    return sum((g * u).sum() + (g * g).sum() for g, u in zip(grads, weights))


def _problem(case):
    lengths = case["lengths"]
    B, H, d, L = 2, len(case["dilation"]) if isinstance(case["dilation"], tuple) else 2, 3, sum(lengths)
    gen = torch.Generator().manual_seed(case["seed"])
    q, k, v, grad = (torch.randn(B, L, H, d, generator=gen, dtype=torch.float64) for _ in range(4))
    weights = [torch.randn(B, L, H, d, generator=gen, dtype=torch.float64) for _ in range(3)]
    padding = None
    if case.get("padding"):
        padding = torch.rand(B, L, generator=gen) < 0.3
        padding[-1, : L // 2] = True  # some windows see no key at all
    return (q, k, v), grad, weights, padding


def _derivatives(inputs, grad, weights, attention):
    """The first gradients of <attention(inputs), grad> with create_graph, and the gradients of the
    penalty built from them."""
    inputs = [x.clone().requires_grad_() for x in inputs]
    out = attention(*inputs)
    first = torch.autograd.grad(out, inputs, grad, create_graph=True)
    penalty = _penalty(first, weights)
    if not penalty.requires_grad:  # an empty shard: nothing depends on its (no) tokens
        return [g.detach() for g in first], [torch.zeros_like(x) for x in inputs]
    return [g.detach() for g in first], list(torch.autograd.grad(penalty, inputs))


def _second_order_errors(cases) -> list[float]:
    """On every rank: for each case, the largest difference between this rank's first and second
    derivatives and the single-device function's rows of them, relative to the largest of those."""
    rank = dist.get_rank()
    errors = []
    for case in cases:
        (q, k, v), grad, weights, padding = _problem(case)
        kwargs = {"dilation": case["dilation"], "backend": case.get("backend", "auto")}

        def whole(q, k, v):
            return sliding_window_attention(q, k, v, case["window"], key_padding_mask=padding, **kwargs)

        expected = _derivatives((q, k, v), grad, weights, whole)
        starts = shard_starts(case["lengths"])
        mine = slice(starts[rank], starts[rank + 1])
        mask = None if padding is None else padding[:, mine]

        def shard(q, k, v):
            return sequence_parallel_attention(q, k, v, case["window"], key_padding_mask=mask, **kwargs)

        got = _derivatives([x[:, mine] for x in (q, k, v)], grad[:, mine], [u[:, mine] for u in weights], shard)
        pairs = [(a, b[:, mine]) for a, b in zip(got[0] + got[1], expected[0] + expected[1])]
        largest = max([1.0] + [float(b.abs().max()) for _, b in pairs if b.numel()])
        errors.append(max([float((a - b).abs().max()) for a, b in pairs if b.numel()], default=0.0) / largest)
    return errors


CASES = [
    {"lengths": [6, 6, 6], "window": 2, "dilation": 1, "seed": 1},  # the neighbours' edges
    {"lengths": [3, 7, 2], "window": (5, 1), "dilation": 1, "seed": 2},  # wider than a shard
    {"lengths": [4, 4, 4], "window": (None, 0), "dilation": 1, "seed": 3},  # causal: every prefix
    {"lengths": [8, 3, 9], "window": (2, 1), "dilation": (1, 3), "seed": 4, "padding": True},
    {"lengths": [6, 0, 5], "window": (3, 3), "dilation": 1, "seed": 5},  # an empty shard
    {"lengths": [7, 6, 5], "window": (3, 2), "dilation": 2, "seed": 6, "backend": "dense"},
    {"lengths": [7, 6, 5], "window": (3, 2), "dilation": 1, "seed": 7, "backend": "tiles", "padding": True},
]


def test_second_derivatives_across_two_and_three_ranks_equal_one_process():
    for world in (2, 3):
        cases = [{**c, "lengths": c["lengths"][: world - 1] + [sum(c["lengths"][world - 1:])]} for c in CASES]
        for rank, errors in enumerate(run_gloo(_second_order_errors, world, cases, timeout=TIMEOUT)):
            for case, error in zip(cases, errors):
                assert error < 1e-12, f"{world} ranks, rank {rank}, case {case}: differs by {error:.2e}"


def _exchange_adjoint() -> list[float]:
    """On every rank: the exchange is linear, its backward the adjoint exchange and the backward
    of that the exchange again: <E k, y> = <k, E^T y> summed over ranks, and the double backward
    (the gradient of E^T y in y, against a direction) equals E applied to that direction."""
    rank, lengths, window = dist.get_rank(), [5, 2, 6], (4, 3)
    gen = torch.Generator().manual_seed(rank)
    k = torch.randn(1, lengths[rank], 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, lengths[rank], 2, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    k_ext, v_ext, _, _ = exchange_halo(k, v, lengths, window)
    y_k, y_v = torch.randn_like(k_ext, requires_grad=True), torch.randn_like(v_ext, requires_grad=True)
    back_k, back_v = torch.autograd.grad((k_ext, v_ext), (k, v), (y_k, y_v), create_graph=True)
    direction_k, direction_v = torch.randn_like(k), torch.randn_like(v)
    again_k, again_v = torch.autograd.grad((back_k, back_v), (y_k, y_v), (direction_k, direction_v))
    exchanged_k, exchanged_v, _, _ = exchange_halo(direction_k, direction_v, lengths, window)
    sides = torch.tensor([float((k_ext * y_k).sum() + (v_ext * y_v).sum()),
                          float((k * back_k).sum() + (v * back_v).sum())], dtype=torch.float64)
    dist.all_reduce(sides)  # both inner products summed over the ranks
    return [float(sides[0] - sides[1]), float((again_k - exchanged_k).abs().max()),
            float((again_v - exchanged_v).abs().max())]


def test_the_exchange_and_its_two_backwards_are_adjoint():
    for rank, (inner, again_k, again_v) in enumerate(run_gloo(_exchange_adjoint, 3, timeout=TIMEOUT)):
        assert abs(inner) < 1e-10, f"rank {rank}: <E k, y> - <k, E^T y> = {inner:.2e}"
        assert again_k == again_v == 0.0, f"rank {rank}: the double backward is not the exchange"


def _forward_mode_errors() -> list[float]:
    """On every rank: the tangent of this rank's output for a tangent of every input (dual
    tensors: each rank's exchange sends the tangents of its halo too), against the rows of the
    single-device function's tangent; one case per window."""
    rank, errors = dist.get_rank(), []
    for case in CASES[:4]:
        (q, k, v), _, tangents, padding = _problem(case)
        kwargs = {"dilation": case["dilation"]}
        with torch.autograd.forward_ad.dual_level():
            duals = [torch.autograd.forward_ad.make_dual(x, t) for x, t in zip((q, k, v), tangents)]
            whole = sliding_window_attention(*duals, case["window"], key_padding_mask=padding, **kwargs)
            expected = torch.autograd.forward_ad.unpack_dual(whole).tangent
            starts = shard_starts(case["lengths"])
            mine = slice(starts[rank], starts[rank + 1])
            shard = sequence_parallel_attention(*(x[:, mine] for x in duals), case["window"],
                                                key_padding_mask=None if padding is None else padding[:, mine], **kwargs)
            got = torch.autograd.forward_ad.unpack_dual(shard).tangent
        errors.append(float((got - expected[:, mine]).abs().max()) if got.numel() else 0.0)
    return errors


def test_forward_mode_across_ranks_equals_one_process():
    for rank, errors in enumerate(run_gloo(_forward_mode_errors, 3, timeout=TIMEOUT)):
        assert max(errors) < 1e-12, f"rank {rank}: tangents differ by {errors}"
