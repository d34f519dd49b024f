"""The halo exchange and :func:`sequence_parallel_attention`: steps 1 and 3 to 5 of
:mod:`swa_tutorial.distributed` (metadata checked on every rank, the autograd exchange, attention
on the extended shard, gradients sent back)."""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from swa_tutorial.attention import sliding_window_attention
from swa_tutorial.backends import check_backend
from swa_tutorial.core.validation import (
    FLOAT_DTYPES,
    check_key_padding_mask,
    check_qkv,
    check_scale,
)
from swa_tutorial.core.windows import check_dilation, check_window
from swa_tutorial.distributed.plan import halo_plan, shard_starts

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


class _Route(NamedTuple):
    """Where one rank's halo pieces come from and go in one exchange: ``plan`` (the transfers),
    ``me`` (this rank in ``group``), ``start`` (the shard's first position in the sequence),
    ``place`` (transfer -> its first row in [left halo | shard | right halo]), ``own`` (the
    shard's rows there) and ``stats`` (the dict that counts the bytes sent, or None)."""

    plan: list
    me: int
    start: int
    place: dict
    own: slice
    group: object
    stats: dict | None


def _route(plan, me: int, start: int, n: int, group, stats) -> _Route:
    incoming = [t for t in plan if t.dst == me]  # in rank order, so in sequence order
    before = sum(t.stop - t.start for t in incoming if t.src < me)
    place, at = {}, 0
    for t in incoming:
        at = max(at, before + n) if t.src > me else at  # right pieces come after the shard
        place[t], at = at, at + t.stop - t.start
    return _Route(plan, me, start, place, slice(before, before + n), group, stats)


def _exchange(route: _Route, k, v, padding):
    """The exchange itself: [left halo | shard | right halo] of k, v and padding (or None)."""
    d, pieces = k.shape[-1], {}

    def send(t):
        i, j = t.start - route.start, t.stop - route.start  # positions in this shard
        kv = torch.cat([k[:, i:j], v[:, i:j]], dim=-1)  # B x m x H x (d + d_v)
        return [kv] if padding is None else [kv, padding[:, i:j].to(torch.uint8)]

    def receive(t):
        kv = k.new_empty(k.shape[0], t.stop - t.start, k.shape[2], d + v.shape[-1])
        pieces[t] = [kv] if padding is None else [kv, padding.new_empty(kv.shape[:2], dtype=torch.uint8)]
        return pieces[t]

    _add(route.stats, "forward_bytes", post_transfers(route.plan, route.me, route.group, send, receive))
    incoming = list(route.place)

    def extended(own, part):  # [left halo | own | right halo] along the sequence
        left = [part(pieces[t]) for t in incoming if t.src < route.me]
        right = [part(pieces[t]) for t in incoming if t.src > route.me]
        return torch.cat(left + [own] + right, dim=1)

    k_ext = extended(k, lambda p: p[0][..., :d])
    v_ext = extended(v, lambda p: p[0][..., d:])
    return k_ext, v_ext, None if padding is None else extended(padding, lambda p: p[1].bool())


def _return(route: _Route, grad_k_ext, grad_v_ext):
    """The exchange's adjoint: each halo piece's gradient back to the rank it came from, where the
    owner adds it to the gradient of its own tokens (in plan order: the same sums on every run)."""
    d, returned = grad_k_ext.shape[-1], {}
    grad_k = grad_k_ext[:, route.own].clone(memory_format=torch.contiguous_format)
    grad_v = grad_v_ext[:, route.own].clone(memory_format=torch.contiguous_format)

    def send(t):  # the gradient of a piece this rank received goes back to its sender
        x, y = route.place[t], route.place[t] + t.stop - t.start
        return [torch.cat([grad_k_ext[:, x:y], grad_v_ext[:, x:y]], dim=-1)]

    def receive(t):  # the gradient of a piece this rank sent comes back
        shape = (grad_k.shape[0], t.stop - t.start, grad_k.shape[2], d + grad_v.shape[-1])
        returned[t] = grad_k.new_empty(shape)
        return [returned[t]]

    sent = post_transfers(route.plan, route.me, route.group, send, receive, reverse=True)
    _add(route.stats, "backward_bytes", sent)
    for t, g in returned.items():
        i, j = t.start - route.start, t.stop - route.start
        grad_k[:, i:j] += g[..., :d]
        grad_v[:, i:j] += g[..., d:]
    return grad_k, grad_v


class _HaloExchange(torch.autograd.Function):
    """k, v [B, n, H, d|d_v] and padding flags bool [B, n] (or None) of this rank's shard in;
    [left halo | shard | right halo] of each out. Linear in k and v: its backward is the adjoint
    exchange (:class:`_HaloReturn`), itself differentiable, so a second backward (a gradient
    penalty, a Hessian-vector product) sends the gradients of the gradients the right way too."""

    @staticmethod
    def forward(ctx, k, v, padding, route):
        ctx.route = route
        k_ext, v_ext, padding_ext = _exchange(route, k, v, padding)
        if padding_ext is not None:
            ctx.mark_non_differentiable(padding_ext)
        return k_ext, v_ext, padding_ext

    @staticmethod
    def backward(ctx, grad_k_ext, grad_v_ext, _grad_padding):
        grad_k, grad_v = _HaloReturn.apply(grad_k_ext, grad_v_ext, ctx.route)
        return grad_k, grad_v, None, None

    @staticmethod
    def jvp(ctx, k_tangent, v_tangent, _padding_tangent, _route):
        """Forward mode (dual tensors): linear, so the tangents are exchanged as the values are."""
        k_ext, v_ext, _ = _exchange(ctx.route, k_tangent, v_tangent, None)
        return k_ext, v_ext, None


class _HaloReturn(torch.autograd.Function):
    """The adjoint of :class:`_HaloExchange`: gradients [B, before + n + after, H, d|d_v] of the
    extended keys and values in, those of this rank's own [B, n, H, d|d_v] out. Its backward is
    the exchange again (without padding flags)."""

    @staticmethod
    def forward(ctx, grad_k_ext, grad_v_ext, route):
        ctx.route = route
        return _return(route, grad_k_ext, grad_v_ext)

    @staticmethod
    def backward(ctx, grad_grad_k, grad_grad_v):
        k_ext, v_ext, _ = _HaloExchange.apply(grad_grad_k, grad_grad_v, None, ctx.route)
        return k_ext, v_ext, None

    @staticmethod
    def jvp(ctx, grad_k_tangent, grad_v_tangent, _route):
        return _return(ctx.route, grad_k_tangent, grad_v_tangent)


def exchange_halo(k, v, lengths, window, *, dilation=1, key_padding_mask=None, group=None, stats=None):
    """Steps 2 and 3: this rank's keys and values with their halos: (k_ext, v_ext, padding_ext, before).

    Every rank of ``group`` calls it with the same shard ``lengths`` (one int per rank), window
    and dilation, and shards that agree in B, H, d, d_v and dtype (:func:`check_shards` makes
    sure). k [B, n, H, d], v [B, n, H, d_v] and ``key_padding_mask`` (bool [B, n] or None; when
    any rank has one, every rank must pass one, all False where there is no padding) become
    [B, before + n + after, ...]: [left halo | shard | right halo] as :func:`halo_plan` says,
    ``before`` the left halo's length. Differentiable in k and v to any order: the backward
    returns each halo gradient to its owner and is itself differentiable (its backward is this
    exchange again), so second derivatives across ranks are those of one process. ``stats`` (a
    dict) gets the bytes this rank sends added to ``"forward_bytes"`` (messages from owner to
    halo: the forward, and a second backward) and ``"backward_bytes"`` (from halo back to owner:
    the backward).
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
    route = _route(plan, me, shard_starts(lengths)[me], k.shape[1], group, stats)
    k_ext, v_ext, padding_ext = _HaloExchange.apply(k, v, key_padding_mask, route)
    return k_ext, v_ext, padding_ext, route.own.start


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
        and v, to second order too (``create_graph=True``: a gradient penalty, a Hessian-vector
        product) where the backend is; when k or v requires grad, every rank must run each
        backward through its output (the halo gradients travel between ranks then), as with any
        collective.

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
