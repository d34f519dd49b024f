"""The halo plan: which tokens each rank sends to whom, and what the four ways to shard cost.

Pure arithmetic on the shard lengths, the window and the dilation: every rank computes the same
plan without communicating (:func:`halo_plan`), and the cost model counts the bytes each rank
sends (:func:`halo_bytes`, :func:`ring_bytes`, :func:`all_gather_bytes`, :func:`all_to_all_bytes`).
"""

from __future__ import annotations

from typing import NamedTuple

from swa_tutorial.core.validation import check_int
from swa_tutorial.core.windows import check_dilation, check_window

# ---------------------------------------------------------------------------------------------
# The plan: who sends which tokens to whom, from the shard lengths alone.


class Transfer(NamedTuple):
    """One message of the halo exchange: tokens ``start`` .. ``stop - 1`` (positions in the whole
    sequence) of rank ``src``'s shard, sent to rank ``dst``."""

    src: int
    dst: int
    start: int
    stop: int


def shard_starts(lengths) -> list[int]:
    """Where each shard starts in the sequence, and where the sequence ends: [0, n_0, n_0 + n_1, ..., L]."""
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    return starts


def check_lengths(lengths) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__") or len(lengths) == 0:
        raise TypeError(f"lengths must be a non-empty sequence of ints >= 0 (one per rank), got {lengths!r}")
    return [check_int(n, "each of lengths") for n in lengths]


def largest_dilation(dilation) -> int:
    """The largest of an int dilation or one int per head (checked as the entry point checks it)."""
    heads = len(dilation) if isinstance(dilation, (tuple, list)) else 1
    return max(check_dilation(dilation, heads))


def halo_reach(window, seq_len: int, dilation=1) -> tuple[int, int]:
    """How many tokens before and after its own position a query may attend: (left D, right D),
    D the largest dilation, each at most ``seq_len``; an unbounded side (None) reaches the whole
    sequence."""
    left, right = check_window(window)
    largest = largest_dilation(dilation)
    return tuple(seq_len if side is None else min(side * largest, seq_len) for side in (left, right))


def halo_plan(lengths, window, dilation=1) -> list[Transfer]:
    """Every transfer of the halo exchange for shards of ``lengths`` tokens (one int per rank, in
    rank order), ordered by receiver, then sender. Every rank computes the same list.

    Rank dst (n_dst > 0 tokens from o_dst) needs the keys o_dst - before .. o_dst + n_dst - 1 +
    after, clipped to the sequence, with (before, after) = :func:`halo_reach`; every other rank
    sends the part of that range it holds. A rank with no tokens needs nothing. The ranges are
    exactly what the window needs when every shard holds at least D tokens (D the largest
    dilation); a shorter shard does not use every residue class of its halo.
    """
    lengths = check_lengths(lengths)
    starts = shard_starts(lengths)
    before, after = halo_reach(window, starts[-1], dilation)
    plan = []
    for dst, n in enumerate(lengths):
        if n == 0:
            continue
        lo, hi = max(0, starts[dst] - before), min(starts[-1], starts[dst + 1] + after)
        for src in range(len(lengths)):
            start, stop = max(lo, starts[src]), min(hi, starts[src + 1])
            if src != dst and start < stop:
                plan.append(Transfer(src, dst, start, stop))
    return plan


# ---------------------------------------------------------------------------------------------
# The cost model: bytes each rank sends, in four ways to shard attention over the sequence.
# Pure arithmetic on the shard lengths (one int per rank) and the sizes of one layer's attention:
# batch B, heads H (of the keys and values), head_dim d, value_dim d_v (default d), and itemsize,
# the bytes of one number (2 for bfloat16). Forward pass only.


def token_bytes(batch, heads, head_dim, value_dim, itemsize) -> int:
    """Bytes of one token's keys and values: B H (d + d_v) itemsize."""
    value_dim = head_dim if value_dim is None else value_dim
    for name, x in (("batch", batch), ("heads", heads), ("head_dim", head_dim), ("value_dim", value_dim)):
        check_int(x, name)
    return batch * heads * (head_dim + value_dim) * check_int(itemsize, "itemsize", 1)


def halo_bytes(lengths, window, *, heads, head_dim, itemsize, batch=1, value_dim=None, dilation=1,
               padding=False, backward=False) -> list[int]:
    """The halo exchange: bytes each rank sends. Forward: the keys and values of the tokens
    :func:`halo_plan` assigns it (and their padding flags, one byte per token and batch row, when
    ``padding``). Away from the ends of the sequence, with shards longer than the window, that is
    (left + right) D tokens, whatever the shard length. ``backward``: the gradients of the keys
    and values of its halo, which it received in the forward, sent back to their owners."""
    per_token = token_bytes(batch, heads, head_dim, value_dim, itemsize) + (batch if padding and not backward else 0)
    sent = [0] * len(check_lengths(lengths))
    for t in halo_plan(lengths, window, dilation):
        sent[t.dst if backward else t.src] += (t.stop - t.start) * per_token
    return sent


def ring_bytes(lengths, *, heads, head_dim, itemsize, batch=1, value_dim=None) -> list[int]:
    """Ring attention: the shards of keys and values travel around the ring, each rank to the next,
    for M - 1 steps on M ranks, so every shard passes every rank. A rank forwards every shard
    except that of the next rank (which never comes back to it): L less the next rank's tokens,
    (M - 1) / M of the sequence for equal shards, whatever the window. (Its backward sends the key and value gradients around too.)"""
    lengths = check_lengths(lengths)
    per_token, world, total = token_bytes(batch, heads, head_dim, value_dim, itemsize), len(lengths), sum(lengths)
    return [(total - lengths[(rank + 1) % world]) * per_token for rank in range(world)]


def all_gather_bytes(lengths, *, heads, head_dim, itemsize, batch=1, value_dim=None) -> list[int]:
    """All-gather of the keys and values (Megatron's context parallelism): every rank receives the
    whole sequence's keys and values, so each shard reaches the M - 1 other ranks; a rank sends its
    n tokens to each (a ring all-gather moves as many bytes in all, forwarding others' shards)."""
    lengths = check_lengths(lengths)
    per_token = token_bytes(batch, heads, head_dim, value_dim, itemsize)
    return [n * (len(lengths) - 1) * per_token for n in lengths]


def all_to_all_bytes(lengths, *, heads, head_dim, itemsize, batch=1, value_dim=None) -> list[int]:
    """All-to-all over heads (DeepSpeed-Ulysses): one all-to-all turns the sequence shards of q, k
    and v into head shards (H / M heads of the whole sequence on each of M ranks), each rank attends its
    heads, and a second all-to-all brings the output back to the sequence shards. A rank sends the
    q, k, v of its n tokens for the H - H / M heads it does not keep, then its heads' output for
    the L - n tokens of the other ranks. ``heads`` (those of q, k and v alike) must be a multiple
    of the number of ranks."""
    lengths = check_lengths(lengths)
    value_dim = head_dim if value_dim is None else value_dim
    world, total = len(lengths), sum(lengths)
    token_bytes(batch, heads, head_dim, value_dim, itemsize)  # checks the sizes
    if heads % world:
        raise ValueError(f"heads must be a multiple of the number of ranks ({world}) to split them, got {heads}")
    kept = heads // world
    return [
        (n * (heads - kept) * (2 * head_dim + value_dim) + (total - n) * kept * value_dim) * batch * itemsize
        for n in lengths
    ]
