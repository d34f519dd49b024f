"""Sequence parallelism: sliding-window attention over a sequence split across processes.

When a sequence outgrows one device it is cut into contiguous shards, one per rank of a process
group, in rank order: a rank holds tokens first .. last of q, k, v as [B, n, H, d], n = last -
first + 1. A query i attends only the keys i - left * dilation .. i + right * dilation, so a rank
needs from the others only the keys and values within that reach of its two ends: its *halo*.
Ring attention passes every key past every rank; a window needs only its neighbours' edges.

:func:`sequence_parallel_attention` runs one call as five steps, on every rank:

1. **metadata**: each rank puts its shapes, dtype, device, window, dilation, scale and shard
   length into 14 integers, and one ``all_gather`` gives every rank the whole table. Every rank
   checks the table the same way, so bad input on any rank (a wrong shape, shards that disagree
   in B, H, d, d_v or dtype) raises on every rank, with the same message, before any data moves.
2. **the plan** (:func:`halo_plan`): from the shard lengths alone every rank computes the same
   list of transfers ``(src, dst, start, stop)``: rank dst needs keys ``first - left * dilation`` to
   ``last + right * dilation`` (its shard's first and last token, the largest dilation, clipped to
   the sequence), and each
   other rank sends the part of that range it holds, over several ranks when the window is wider
   than a shard; nothing from the right for a causal window.
3. **the exchange** (:func:`exchange_halo`): one batch of point-to-point sends and receives
   (``torch.distributed.batch_isend_irecv``); each transfer is one message holding keys and
   values side by side, [B, m, H, d + d_v], and one of padding flags [B, m] when any rank has
   a padding mask. Rank dst lays out ``[left halo | its shard | right halo]``.
4. **attention**: the single-device :func:`~swa_tutorial.sliding_window_attention` on that
   extended shard, with zero queries in the halo rows; the rank keeps its own rows. A window
   (and a dilation's residue classes) depends only on j - i, so local positions are as good as
   global ones.
5. **backward**: the gradients of the halo keys and values go back the way they came, each
   to the rank that owns those tokens, which adds them to its own (an autograd function).

The cost of the design: a rank computes ``before + after`` halo query rows it throws away, the
fraction (before + after) / n of its work, negligible when shards are much longer than the
window's reach. A kernel that takes a rectangular block of queries against a longer block of
keys would skip them; the package's backends take square problems. The cost model (:func:`halo_bytes`, :func:`ring_bytes`,
:func:`all_gather_bytes`, :func:`all_to_all_bytes`) counts the bytes each rank sends in the
four ways to shard attention over a sequence.

Tested with gloo on CPUs (2 to 4 processes); the code is device-agnostic and meant for NCCL on
GPUs too (the metadata then travels on the current CUDA device), but is not tested there.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import queue
import struct
import sys
import tempfile
import time
import traceback
import zlib
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from .attention import sliding_window_attention
from .backends import check_backend
from .validation import FLOAT_DTYPES, check_int, check_key_padding_mask, check_qkv, check_scale
from .windows import check_dilation, check_window

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


def _check_lengths(lengths) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__len__") or len(lengths) == 0:
        raise TypeError(f"lengths must be a non-empty sequence of ints >= 0 (one per rank), got {lengths!r}")
    return [check_int(n, "each of lengths") for n in lengths]


def _largest_dilation(dilation) -> int:
    """The largest of an int dilation or one int per head (checked as the entry point checks it)."""
    heads = len(dilation) if isinstance(dilation, (tuple, list)) else 1
    return max(check_dilation(dilation, heads))


def halo_reach(window, seq_len: int, dilation=1) -> tuple[int, int]:
    """How many tokens before and after its own position a query may attend: (left D, right D),
    D the largest dilation, each at most ``seq_len``; an unbounded side (None) reaches the whole
    sequence."""
    left, right = check_window(window)
    largest = _largest_dilation(dilation)
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
    lengths = _check_lengths(lengths)
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


def _token_bytes(batch, heads, head_dim, value_dim, itemsize) -> int:
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
    per_token = _token_bytes(batch, heads, head_dim, value_dim, itemsize) + (batch if padding and not backward else 0)
    sent = [0] * len(_check_lengths(lengths))
    for t in halo_plan(lengths, window, dilation):
        sent[t.dst if backward else t.src] += (t.stop - t.start) * per_token
    return sent


def ring_bytes(lengths, *, heads, head_dim, itemsize, batch=1, value_dim=None) -> list[int]:
    """Ring attention: the shards of keys and values travel around the ring, each rank to the next,
    for M - 1 steps on M ranks, so every shard passes every rank. A rank forwards every shard
    except that of the next rank (which never comes back to it): L less the next rank's tokens,
    (M - 1) / M of the sequence for equal shards, whatever the window. (Its backward sends the key and value gradients around too.)"""
    lengths = _check_lengths(lengths)
    per_token, world, total = _token_bytes(batch, heads, head_dim, value_dim, itemsize), len(lengths), sum(lengths)
    return [(total - lengths[(rank + 1) % world]) * per_token for rank in range(world)]


def all_gather_bytes(lengths, *, heads, head_dim, itemsize, batch=1, value_dim=None) -> list[int]:
    """All-gather of the keys and values (Megatron's context parallelism): every rank receives the
    whole sequence's keys and values, so each shard reaches the M - 1 other ranks; a rank sends its
    n tokens to each (a ring all-gather moves as many bytes in all, forwarding others' shards)."""
    lengths = _check_lengths(lengths)
    per_token = _token_bytes(batch, heads, head_dim, value_dim, itemsize)
    return [n * (len(lengths) - 1) * per_token for n in lengths]


def all_to_all_bytes(lengths, *, heads, head_dim, itemsize, batch=1, value_dim=None) -> list[int]:
    """All-to-all over heads (DeepSpeed-Ulysses): one all-to-all turns the sequence shards of q, k
    and v into head shards (H / M heads of the whole sequence on each of M ranks), each rank attends its
    heads, and a second all-to-all brings the output back to the sequence shards. A rank sends the
    q, k, v of its n tokens for the H - H / M heads it does not keep, then its heads' output for
    the L - n tokens of the other ranks. ``heads`` (those of q, k and v alike) must be a multiple
    of the number of ranks."""
    lengths = _check_lengths(lengths)
    value_dim = head_dim if value_dim is None else value_dim
    world, total = len(lengths), sum(lengths)
    _token_bytes(batch, heads, head_dim, value_dim, itemsize)  # checks the sizes
    if heads % world:
        raise ValueError(f"heads must be a multiple of the number of ranks ({world}) to split them, got {heads}")
    kept = heads // world
    return [
        (n * (heads - kept) * (2 * head_dim + value_dim) + (total - n) * kept * value_dim) * batch * itemsize
        for n in lengths
    ]


# ---------------------------------------------------------------------------------------------
# Step 1: the metadata, checked on every rank before any data moves.

_FIELDS = ("error", "batch", "length", "heads", "head_dim", "value_dim", "dtype", "device", "padding",
           "left", "right", "dilation", "scale", "grad")
_AGREE = {  # field -> how the message names it; every rank must give the same value
    "batch": "the batch size B of q, k and v",
    "heads": "the number of heads H of q, k and v",
    "head_dim": "the head dim d of q and k",
    "value_dim": "the value dim d_v of v",
    "dtype": "the dtype of q, k and v",
    "device": "the device type of q, k and v",
    "left": "window's left side",
    "right": "window's right side",
    "dilation": "dilation",
    "scale": "scale",
    "grad": "whether k or v requires grad (the backward exchanges halo gradients on every rank)",
}
_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu", "meta")  # others: -1
_MESSAGE_BYTES = 1024  # an error message travels in this many bytes, cut if longer


def _metadata(q, k, v, window, key_padding_mask, scale, dilation, backend, stats) -> list[int]:
    """This rank's row of the metadata table; raises TypeError/ValueError on bad input."""
    check_qkv(q, k, v)
    left, right = check_window(window)
    batch, length, heads, head_dim = q.shape
    check_key_padding_mask(key_padding_mask, batch, length, q.device)
    scale = check_scale(scale, head_dim)
    dilations = check_dilation(dilation, heads)
    check_backend(backend)
    if stats is not None and not isinstance(stats, dict):
        raise TypeError(f"stats must be a dict or None, got {type(stats).__name__}")
    row = {
        "error": 0, "batch": batch, "length": length, "heads": heads, "head_dim": head_dim,
        "value_dim": v.shape[-1], "dtype": FLOAT_DTYPES.index(q.dtype),
        "device": _DEVICE_TYPES.index(q.device.type) if q.device.type in _DEVICE_TYPES else -1, "padding": int(key_padding_mask is not None),
        "left": -1 if left is None else left, "right": -1 if right is None else right,
        "dilation": zlib.crc32(repr(dilations).encode()),
        "scale": struct.unpack("<q", struct.pack("<d", scale))[0],  # the float's 64 bits
        "grad": int(torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)),
    }
    return [row[name] for name in _FIELDS]


def _add(stats, key: str, sent: int) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + sent


def _collective_device(group) -> torch.device:
    """Where the metadata travels: the CPU for gloo, the current CUDA device for NCCL."""
    backend = str(dist.get_backend(group))
    if "gloo" not in backend and "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(row: torch.Tensor, group) -> list[torch.Tensor]:
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, row, group=group)
    return rows


def _show(field: str, value: int) -> str:
    if field == "dtype":
        return str(FLOAT_DTYPES[value]).replace("torch.", "")
    if field == "scale":
        return f"{struct.unpack('<d', struct.pack('<q', value))[0]:.6g}"
    if field in ("left", "right") and value == -1:
        return "None"
    if field == "device":
        return _DEVICE_TYPES[value] if value >= 0 else "another device type"
    if field == "dilation":  # sent as a checksum: say only that it differs
        return f"#{value:08x}"
    return str(value)


def _disagreement(field: str, values: list[int]) -> str:
    ranks: dict[int, list[int]] = {}
    for rank, value in enumerate(values):
        ranks.setdefault(value, []).append(rank)
    parts = [f"{_show(field, value)} on rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}"
             for value, rs in ranks.items()]
    return f"{_AGREE[field]} must be the same on every rank of the group, got {'; '.join(parts)}"


def check_shards(q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, backend="auto", group=None,
                 stats=None) -> list[dict]:
    """Step 1: every rank's metadata, checked the same way on every rank: one dict per rank.

    Each rank checks its own arguments as :func:`~swa_tutorial.sliding_window_attention` does,
    then one ``all_gather`` of 14 integers per rank shares the result; if any rank's arguments
    were bad, a second ``all_gather`` shares the messages and every rank raises (a ValueError, or
    the bad rank's own error type on that rank) naming the rank and what was wrong. Then the
    ranks must agree on B, H, d, d_v, dtype, device type, window, dilation, scale and whether the
    keys or values require grad. Either every rank returns, or every rank raises.
    """
    group = group or dist.group.WORLD
    device = _collective_device(group)
    error = None
    try:
        row = _metadata(q, k, v, window, key_padding_mask, scale, dilation, backend, stats)
    except (TypeError, ValueError) as bad:
        error, row = bad, [1] + [0] * (len(_FIELDS) - 1)
    table = [r.tolist() for r in _all_gather(torch.tensor(row, dtype=torch.int64, device=device), group)]
    bad_ranks = [rank for rank, r in enumerate(table) if r[0]]
    if bad_ranks:
        text = str(error).encode()[:_MESSAGE_BYTES] if error else b""
        message = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8)
        message[: len(text)] = torch.tensor(list(text), dtype=torch.uint8)
        texts = [bytes(m.tolist()).rstrip(b"\0").decode(errors="replace")
                 for m in _all_gather(message.to(device), group)]
        said = "; ".join(f"rank {rank}: {texts[rank]}" for rank in bad_ranks)
        raise (type(error) if error else ValueError)(f"sequence_parallel_attention: bad input on {said}")
    rows = [dict(zip(_FIELDS, r)) for r in table]
    for field in _AGREE:
        values = [r[field] for r in rows]
        if len(set(values)) > 1:
            raise ValueError(f"sequence_parallel_attention: {_disagreement(field, values)}")
    _add(stats, "metadata_bytes", 8 * len(_FIELDS))
    return rows


# ---------------------------------------------------------------------------------------------
# Step 3: the exchange, and its backward.


def post_transfers(plan, me: int, group, outgoing, incoming, reverse: bool = False) -> int:
    """One batch of point-to-point messages over ``plan``'s transfers (:func:`halo_plan`), the
    mechanism of :func:`exchange_halo`; returns the bytes this rank (``me``, its rank in
    ``group``) sent.

    ``outgoing(t)`` gives the tensors this rank sends for transfer t, ``incoming(t)`` the buffers
    it receives t into; with ``reverse`` every transfer runs from dst back to src (the backward).
    Both ends walk the same list in the same order, so the messages of each pair match up.
    """
    ops, sent = [], 0
    for t in plan:
        src, dst = (t.dst, t.src) if reverse else (t.src, t.dst)
        if src == me:
            for x in outgoing(t):
                ops.append(dist.P2POp(dist.isend, x, dist.get_global_rank(group, dst), group))
                sent += x.numel() * x.element_size()
        if dst == me:
            ops += [dist.P2POp(dist.irecv, x, dist.get_global_rank(group, src), group) for x in incoming(t)]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return sent


class _HaloExchange(torch.autograd.Function):
    """k, v [B, n, H, d|d_v] and padding flags bool [B, n] (or None) of this rank's shard in;
    [left halo | shard | right halo] of each out. The backward sends each halo piece's gradient
    back to the rank it came from; the owner adds it to the gradient of its own tokens."""

    @staticmethod
    def forward(ctx, k, v, padding, plan, me, start, group, stats):
        d, n = k.shape[-1], k.shape[1]
        incoming = [t for t in plan if t.dst == me]  # in rank order, so in sequence order
        before = sum(t.stop - t.start for t in incoming if t.src < me)
        place, at = {}, 0  # where each received piece goes in [left halo | shard | right halo]
        for t in incoming:
            at = max(at, before + n) if t.src > me else at  # right pieces come after the shard
            place[t], at = at, at + t.stop - t.start
        pieces = {}

        def send(t):
            i, j = t.start - start, t.stop - start  # positions in this shard
            kv = torch.cat([k[:, i:j], v[:, i:j]], dim=-1)  # B x m x H x (d + d_v)
            return [kv] if padding is None else [kv, padding[:, i:j].to(torch.uint8)]

        def receive(t):
            kv = k.new_empty(k.shape[0], t.stop - t.start, k.shape[2], d + v.shape[-1])
            pieces[t] = [kv] if padding is None else [kv, padding.new_empty(kv.shape[:2], dtype=torch.uint8)]
            return pieces[t]

        _add(stats, "forward_bytes", post_transfers(plan, me, group, send, receive))

        def extended(own, part):  # [left halo | own | right halo] along the sequence
            left = [part(pieces[t]) for t in incoming if t.src < me]
            right = [part(pieces[t]) for t in incoming if t.src > me]
            return torch.cat(left + [own] + right, dim=1)

        k_ext = extended(k, lambda p: p[0][..., :d])
        v_ext = extended(v, lambda p: p[0][..., d:])
        padding_ext = None if padding is None else extended(padding, lambda p: p[1].bool())
        ctx.plan, ctx.me, ctx.start, ctx.group, ctx.stats = plan, me, start, group, stats
        ctx.place, ctx.own = place, slice(before, before + n)
        if padding_ext is not None:
            ctx.mark_non_differentiable(padding_ext)
        return k_ext, v_ext, padding_ext

    @staticmethod
    def backward(ctx, grad_k_ext, grad_v_ext, _grad_padding):
        d, place = grad_k_ext.shape[-1], ctx.place
        grad_k = grad_k_ext[:, ctx.own].clone(memory_format=torch.contiguous_format)
        grad_v = grad_v_ext[:, ctx.own].clone(memory_format=torch.contiguous_format)
        returned = {}

        def send(t):  # the gradient of a piece this rank received goes back to its sender
            x, y = place[t], place[t] + t.stop - t.start
            return [torch.cat([grad_k_ext[:, x:y], grad_v_ext[:, x:y]], dim=-1)]

        def receive(t):  # the gradient of a piece this rank sent comes back
            shape = (grad_k.shape[0], t.stop - t.start, grad_k.shape[2], d + grad_v.shape[-1])
            returned[t] = grad_k.new_empty(shape)
            return [returned[t]]

        _add(ctx.stats, "backward_bytes", post_transfers(ctx.plan, ctx.me, ctx.group, send, receive, reverse=True))
        for t, g in returned.items():  # in plan order: the sums are the same on every run
            i, j = t.start - ctx.start, t.stop - ctx.start
            grad_k[:, i:j] += g[..., :d]
            grad_v[:, i:j] += g[..., d:]
        return grad_k, grad_v, None, None, None, None, None, None


def exchange_halo(k, v, lengths, window, *, dilation=1, key_padding_mask=None, group=None, stats=None):
    """Steps 2 and 3: this rank's keys and values with their halos: (k_ext, v_ext, padding_ext, before).

    Every rank of ``group`` calls it with the same shard ``lengths`` (one int per rank), window
    and dilation, and shards that agree in B, H, d, d_v and dtype (:func:`check_shards` makes
    sure). k [B, n, H, d], v [B, n, H, d_v] and ``key_padding_mask`` (bool [B, n] or None; when
    any rank has one, every rank must pass one, all False where there is no padding) become
    [B, before + n + after, ...]: [left halo | shard | right halo] as :func:`halo_plan` says,
    ``before`` the left halo's length. Differentiable in k and v: the backward returns each halo
    gradient to its owner. ``stats`` (a dict) gets the bytes this rank sends added to
    ``"forward_bytes"`` and, in the backward, to ``"backward_bytes"``.
    """
    group = group or dist.group.WORLD
    me = dist.get_rank(group)
    plan = halo_plan(lengths, window, dilation)
    if k.shape[0] * k.shape[2] * (k.shape[3] + v.shape[3]) == 0:  # B, H or d + d_v is 0: no numbers to send
        plan = []
    _add(stats, "forward_bytes", 0)
    _add(stats, "backward_bytes", 0)
    if not any(me in (t.src, t.dst) for t in plan):  # nothing to send or receive
        return k, v, key_padding_mask, 0
    start = shard_starts(lengths)[me]
    k_ext, v_ext, padding_ext = _HaloExchange.apply(k, v, key_padding_mask, plan, me, start, group, stats)
    return k_ext, v_ext, padding_ext, sum(t.stop - t.start for t in plan if t.dst == me and t.src < me)


# ---------------------------------------------------------------------------------------------
# Steps 1 to 5.


def sequence_parallel_attention(q, k, v, window, *, key_padding_mask=None, scale=None, dilation=1, group=None,
                                backend="auto", stats=None):
    """Sliding-window attention over a sequence sharded across the ranks of a process group.

    Call it on every rank of ``group`` (default: the whole world) with that rank's shard; the
    shards, in rank order, make the sequence. The result on each rank is its rows of
    ``sliding_window_attention`` on the whole sequence.

    Args:
        q, k: this rank's queries and keys [B, n, H, d]; v: values [B, n, H, d_v]. Shard
            lengths n may differ between ranks (0 too); B, H, d, d_v, dtype and device type must
            not. Float64, float32, float16 or bfloat16; CPU tensors with gloo, CUDA with NCCL.
        window: as in :func:`~swa_tutorial.sliding_window_attention`: w, or (left, right) with
            None for an unbounded side. An unbounded side is exact across ranks too: its halo is
            every token on that side, so ``(None, 0)`` gathers each rank's whole prefix
            (causal attention; ring attention does that with less memory).
        key_padding_mask: optional bool [B, n], True = padding key. Ranks may pass None while
            others pass a mask (None means no padding in that shard).
        scale, dilation, backend: as in :func:`~swa_tutorial.sliding_window_attention`; the
            same on every rank.
        group: the ``torch.distributed`` process group (initialized; one rank is fine).
        stats: optional dict; the bytes this rank sends are added to its ``"forward_bytes"``
            (keys, values and padding flags), ``"backward_bytes"`` (key and value gradients, when
            the backward runs) and ``"metadata_bytes"`` (its row of the metadata table).

    Returns:
        This rank's output [B, n, H, d_v], contiguous, the dtype of q. Differentiable in q, k
        and v; when k or v requires grad, every rank must run the backward through its output
        (the halo gradients travel between ranks then), as with any collective.

    As with any collective, every rank of the group makes the same calls in the same order
    (forward, and backward: a stack of layers does), each its own shard.

    Bad input on any rank raises on every rank before any data moves (see :func:`check_shards`).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sequence_parallel_attention needs torch.distributed: call "
                           "torch.distributed.init_process_group first (a world of one rank is fine)")
    group = group or dist.group.WORLD
    rows = check_shards(q, k, v, window, key_padding_mask=key_padding_mask, scale=scale, dilation=dilation,
                        backend=backend, group=group, stats=stats)
    batch, n, heads, head_dim = q.shape
    padding = key_padding_mask
    if padding is None and any(r["padding"] for r in rows):  # others have padding: this shard has none
        padding = torch.zeros(batch, n, dtype=torch.bool, device=q.device)
    k_ext, v_ext, padding_ext, before = exchange_halo(k, v, [r["length"] for r in rows], window, dilation=dilation,
                                                      key_padding_mask=padding, group=group, stats=stats)
    after = k_ext.shape[1] - before - n
    q_ext = F.pad(q, (0, 0, 0, 0, before, after))  # zero queries in the halo rows, thrown away
    out = sliding_window_attention(q_ext, k_ext, v_ext, window, key_padding_mask=padding_ext,
                                   scale=check_scale(scale, head_dim), dilation=dilation, backend=backend)
    return out[:, before:before + n].contiguous()


# ---------------------------------------------------------------------------------------------
# Running it: local gloo processes, and the self-checking demo (python -m swa_tutorial.distributed).


def _worker(fn, rank, world_size, store, timeout, results, args, kwargs) -> None:
    """One process of :func:`run_gloo`: join the group, run ``fn``, report through ``results``."""
    torch.set_num_threads(1)  # the processes share the machine's cores
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        dist.barrier()  # every rank connected before any may finish and leave
        try:
            value = fn(*args, **kwargs)
        finally:
            dist.destroy_process_group()
        buffer = io.BytesIO()
        torch.save(value, buffer)  # plain bytes through the queue: no shared memory to outlive us
        results.put((rank, True, buffer.getvalue()))
    except BaseException:  # noqa: BLE001  (reported to the parent, which raises)
        results.put((rank, False, traceback.format_exc()))


def run_gloo(fn, world_size: int, *args, timeout: float = 60.0, **kwargs) -> list:
    """Run ``fn(*args, **kwargs)`` in ``world_size`` local processes joined in a gloo process
    group (CPU); return what each returned, in rank order.

    A quick way to try :func:`sequence_parallel_attention` without torchrun, in a script or a
    notebook. Processes are forked on Linux (quick: nothing to import again) and spawned
    elsewhere (then ``fn`` must be importable from a module, not defined in ``__main__``); each
    uses one CPU thread. If any rank raises, this raises a RuntimeError holding every failing
    rank's traceback; ranks still running after ``timeout`` seconds (a hang: also the timeout of
    each collective) are ended and a TimeoutError raised.
    """
    world_size = check_int(world_size, "world_size", 1)
    context = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = os.path.join(folder, "store")
        processes = [context.Process(target=_worker, daemon=True,
                                     args=(fn, rank, world_size, store, timeout, results, args, kwargs))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        reports, deadline = {}, time.monotonic() + timeout
        try:
            while len(reports) < world_size:
                rank, ok, value = results.get(timeout=max(deadline - time.monotonic(), 0.01))
                reports[rank] = ok, value
        except queue.Empty:
            missing = sorted(set(range(world_size)) - set(reports))
            raise TimeoutError(f"run_gloo: rank(s) {missing} did not finish within {timeout} s") from None
        finally:
            for process in processes:  # all reported: they are leaving; a hang: end it now
                process.join(timeout=10 if len(reports) == world_size else 0)
                if process.is_alive():
                    process.kill()
                    process.join()
    failed = [f"rank {rank} raised:\n{value}" for rank, (ok, value) in sorted(reports.items()) if not ok]
    if failed:
        raise RuntimeError("run_gloo: " + "\n".join(failed))
    return [torch.load(io.BytesIO(reports[rank][1]), weights_only=False) for rank in range(world_size)]


def attend_shards(q, k, v, window, lengths, *, grad=None, key_padding_mask=None, **kwargs) -> dict:
    """On every rank of an initialized group: this rank's shard of whole-sequence tensors through
    :func:`sequence_parallel_attention`, and its backward when ``grad`` is given.

    For trying the exchange out where every rank can hold the whole problem (with
    :func:`run_gloo`, in a notebook or a test): q, k [B, L, H, d] and v [B, L, H, d_v] are cut into
    shards of ``lengths`` tokens (one int per rank, in rank order, summing to L), as is
    ``key_padding_mask`` (bool [B, L]); ``grad`` [B, L, H, d_v] is the gradient of the whole
    output; other keyword arguments go to :func:`sequence_parallel_attention`. Returns this
    rank's ``{"out": [B, n, H, d_v], "grads": (dq, dk, dv) of its shard or None, "stats": the
    bytes it sent}``.
    """
    rank, world = dist.get_rank(kwargs.get("group")), dist.get_world_size(kwargs.get("group"))
    starts = shard_starts(_check_lengths(lengths))
    if len(lengths) != world or starts[-1] != q.shape[1]:
        raise ValueError(f"lengths must hold one shard length per rank ({world}) summing to L = {q.shape[1]}, "
                         f"got {list(lengths)}")
    mine = slice(starts[rank], starts[rank + 1])
    shard = [x.detach()[:, mine].clone().requires_grad_(grad is not None) for x in (q, k, v)]
    mask = None if key_padding_mask is None else key_padding_mask[:, mine]
    stats = {}
    out = sequence_parallel_attention(*shard, window, key_padding_mask=mask, stats=stats, **kwargs)
    if grad is not None:
        out.backward(grad[:, mine])
    return {"out": out.detach(), "grads": None if grad is None else tuple(x.grad for x in shard), "stats": stats}


DEMO = {"window": (4, 2), "dilation": (1, 2), "batch": 2, "heads": 2, "head_dim": 3, "value_dim": 2}


def demo_lengths(world_size: int) -> list[int]:
    """The demo's shard lengths: unequal, some shorter than the window's reach (4 x 2 tokens)."""
    return [3 + 5 * r % 7 for r in range(world_size)]


def demo(device="cpu", seed: int = 0) -> dict:
    """One rank's part of the self-check, inside an initialized process group: a seeded float64
    problem (the same on every rank) with ``DEMO``'s sizes, window and per-head dilations,
    shards of :func:`demo_lengths` and some padding keys; this rank's shard through
    :func:`sequence_parallel_attention`, forward and backward, against the single-device
    :func:`~swa_tutorial.sliding_window_attention` on the whole sequence. Returns this rank's
    report: its tokens, the largest difference (output and gradients), the bytes it sent and
    what :func:`halo_bytes` predicts."""
    rank, world = dist.get_rank(), dist.get_world_size()
    lengths, (batch, heads, d, d_v) = demo_lengths(world), (DEMO[k] for k in ("batch", "heads", "head_dim", "value_dim"))
    starts, window, dilation = shard_starts(lengths), DEMO["window"], DEMO["dilation"]
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, starts[-1], heads, d)] * 2 + [(batch, starts[-1], heads, d_v)] * 2
    q, k, v, grad = (torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes)
    padding = torch.zeros(batch, starts[-1], dtype=torch.bool, device=device)
    padding[0, 2], padding[-1, -3:] = True, True
    whole = [x.clone().requires_grad_() for x in (q, k, v)]  # one process: the whole sequence
    expected = sliding_window_attention(*whole, window, key_padding_mask=padding, dilation=dilation)
    expected.backward(grad)
    got = attend_shards(q, k, v, window, lengths, grad=grad, key_padding_mask=padding, dilation=dilation)
    mine = slice(starts[rank], starts[rank + 1])
    pairs = [(got["out"], expected.detach()[:, mine])] + [(g, w.grad[:, mine]) for g, w in zip(got["grads"], whole)]
    sizes = {"heads": heads, "head_dim": d, "value_dim": d_v, "batch": batch, "itemsize": 8}
    return {
        "rank": rank,
        "tokens": (starts[rank], starts[rank + 1]),
        "error": max(float((a - b).abs().max()) for a, b in pairs if a.numel()),
        **got["stats"],
        "model_forward_bytes": halo_bytes(lengths, window, dilation=dilation, padding=True, **sizes)[rank],
        "model_backward_bytes": halo_bytes(lengths, window, dilation=dilation, backward=True, **sizes)[rank],
        "sends_to": sorted({t.dst for t in halo_plan(lengths, window, dilation) if t.src == rank}),
    }


def report(reports: list[dict]) -> str:
    """The demo's reports (one per rank) as a table."""
    lines = [f"{'rank':>4} {'positions':>9} {'sends to':>10} {'bytes fwd':>10} {'bytes bwd':>10} {'= model':>8} "
             f"{'max |diff|':>10}"]
    for r in reports:
        matches = r["forward_bytes"] == r["model_forward_bytes"] and r["backward_bytes"] == r["model_backward_bytes"]
        lines.append(f"{r['rank']:>4} {r['tokens'][0]:>4}..{r['tokens'][1] - 1:<3} "
                     f"{','.join(map(str, r['sends_to'])) or '-':>10} {r['forward_bytes']:>10} "
                     f"{r['backward_bytes']:>10} {str(matches):>8} {r['error']:>10.1e}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``torchrun --nproc-per-node 4 -m swa_tutorial.distributed``, or without torchrun
    ``python -m swa_tutorial.distributed --world-size 4`` (local gloo processes)."""
    parser = argparse.ArgumentParser(prog="python -m swa_tutorial.distributed", description=main.__doc__)
    parser.add_argument("--world-size", type=int, default=4, help="processes to start without torchrun")
    parser.add_argument("--backend", choices=("gloo", "nccl"), help="under torchrun; default nccl with CUDA")
    args = parser.parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        backend = args.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        device = torch.device("cpu")
        if backend == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
        reports = [None] * dist.get_world_size()
        dist.all_gather_object(reports, demo(device))
        dist.destroy_process_group()
        if int(os.environ["RANK"]) != 0:
            return 0 if max(r["error"] for r in reports) < 1e-12 else 1
    else:
        backend = "gloo"
        reports = run_gloo(demo, args.world_size)
    print(f"sequence-parallel sliding-window attention, {len(reports)} rank(s) ({backend}): window "
          f"{DEMO['window']}, dilation {DEMO['dilation']}, float64, checked against one process")
    print(report(reports))
    ok = max(r["error"] for r in reports) < 1e-12 and all(
        r["forward_bytes"] == r["model_forward_bytes"] and r["backward_bytes"] == r["model_backward_bytes"]
        for r in reports)
    print("outputs and gradients equal the single-device function's; bytes equal halo_bytes" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
