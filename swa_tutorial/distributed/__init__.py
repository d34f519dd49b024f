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
   to the rank that owns those tokens, which adds them to its own (an autograd function). That
   return is the exchange's adjoint and is differentiable in turn (its backward is the exchange
   again), so second derivatives (``create_graph=True``) cross ranks exactly too.

The cost of the design: a rank computes ``before + after`` halo query rows it throws away, the
fraction (before + after) / n of its work, negligible when shards are much longer than the
window's reach. A kernel that takes a rectangular block of queries against a longer block of
keys would skip them; the package's backends take square problems. The cost model (:func:`halo_bytes`, :func:`ring_bytes`,
:func:`all_gather_bytes`, :func:`all_to_all_bytes`) counts the bytes each rank sends in the
four ways to shard attention over a sequence.

Tested with gloo on CPUs (2 to 4 processes); the code is device-agnostic and meant for NCCL on
GPUs too (the metadata then travels on the current CUDA device), but is not tested there.
"""

from swa_tutorial.distributed.exchange import (
    check_shards,
    exchange_halo,
    post_transfers,
    sequence_parallel_attention,
)
from swa_tutorial.distributed.launch import attend_shards, run_gloo
from swa_tutorial.distributed.plan import (
    Transfer,
    all_gather_bytes,
    all_to_all_bytes,
    halo_bytes,
    halo_plan,
    halo_reach,
    ring_bytes,
    shard_starts,
)
