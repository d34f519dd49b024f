"""Generation with a sliding window: a rolling key/value cache that never grows.

With a causal window ``(left, 0)`` token t attends only keys t - left .. t: the newest left + 1
tokens. So generation needs only those: a ring buffer of S = left + 1 slots, token t in slot
t mod S. Each new token overwrites the one that has just left every future window, and its query
then reads the whole buffer, which holds exactly its window. Attention is a sum over keys, so
the order of the slots does not matter; only which tokens they hold.

Token by token the outputs equal ``sliding_window_attention(q, k, v, (left, 0))`` over the whole
sequence (with the prompt's key padding mask), however long the generation runs, and the buffers
are allocated once: every write is in place.
"""

from __future__ import annotations

import torch

from swa_tutorial.core.precision import accumulation_dtype, without_autocast
from swa_tutorial.core.softmax import masked_softmax
from swa_tutorial.core.validation import (
    FLOAT_DTYPES,
    check_int,
    check_key_padding_mask,
    check_scale,
    check_tensor,
)


def masked_attention(q, k, v, allowed, scale: float) -> torch.Tensor:
    """Softmax attention of n queries over m keys with a mask: [B, n, H, d_v].

    q: [B, n, H, d]; k: [B, m, H, d]; v: [B, m, H, d_v]; allowed: bool [B, n, m], True where
    query a may attend key j. The masked softmax is the package's own
    (:func:`swa_tutorial.core.softmax.masked_softmax`): scores, softmax and P x V in float32 for
    float16/bfloat16 inputs (float64 for float64), and a query with no allowed key outputs exactly
    0. Returns q's dtype.
    """
    acc = accumulation_dtype(q.dtype)
    with without_autocast(q.device):  # the float32 products stay float32 under torch.autocast
        scores = torch.einsum("bihd,bjhd->bhij", q.to(acc) * scale, k.to(acc))  # B x H x n x m
        probs, _ = masked_softmax(scores, allowed[:, None])  # B x H x n x m
        return torch.einsum("bhij,bjhd->bihd", probs, v.to(acc)).to(q.dtype)


class RollingKVCache:
    """Keys and values of the newest left + 1 tokens, for generating with the window ``(left, 0)``.

    Args:
        left: how many earlier tokens each token sees (an int >= 0); it sees itself too.
        batch, heads, head_dim: B, H and d of the queries and keys.
        value_dim: d_v of the values (default head_dim).
        dtype: float64, float32, float16 or bfloat16; q, k and v must have it.
        device: where the buffers live; q, k and v must be there.
        scale: the factor on q . k (default 1 / sqrt(head_dim)), finite in the dtype it is
            applied in (float32 for float32 and half caches, float64 for float64).

    Use: one :meth:`prefill` with the prompt [B, T, H, d] (T may be 0), then :meth:`step` once per
    new token [B, 1, H, d]; :meth:`reset` starts a new sequence in the same buffers. Both return
    the attention output of their queries, [B, n, H, d_v] in ``dtype``; for float16/bfloat16 the
    scores, softmax and P x V run in float32. A NaN or inf in q or k makes NaN exactly the rows
    that score it inside their window, as in dense attention. For inference: nothing is recorded
    for autograd.

    Storage: ``keys`` [B, S, H, d] and ``values`` [B, S, H, d_v] with S = left + 1, made once and
    written in place; ``positions`` [S] says which token (from 0) each slot holds (-1: none yet),
    ``held`` [B, S] whether that token is a real (not padding) key; ``length`` counts the tokens
    seen, padding included.
    """

    def __init__(self, left, *, batch, heads, head_dim, value_dim=None, dtype=torch.float32,
                 device=None, scale=None):
        if left is None:
            raise TypeError("left must be an int >= 0: a rolling cache needs a bounded window, got None")
        self.left = check_int(left, "left", 0)
        self.batch = check_int(batch, "batch", 1)
        self.heads = check_int(heads, "heads", 1)
        self.head_dim = check_int(head_dim, "head_dim", 1)
        self.value_dim = self.head_dim if value_dim is None else check_int(value_dim, "value_dim", 1)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be torch.float64, float32, float16 or bfloat16, got {dtype}")
        self.dtype = dtype
        try:
            device = torch.device("cpu" if device is None else device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must name a torch device, got {device!r}") from error
        try:  # torch says "Torch not compiled with CUDA enabled" as a bare AssertionError
            torch.empty(0, device=device)
        except (AssertionError, RuntimeError) as error:
            raise ValueError(f"device must be a device this build of torch can use, got {str(device)!r} "
                             f"({error})") from error
        self.scale = check_scale(scale, self.head_dim, accumulation_dtype(dtype))
        B, S, H = self.batch, self.left + 1, self.heads
        # zeros, not empty: a slot that holds no key still meets a zero weight in P x V
        self.keys = torch.zeros(B, S, H, self.head_dim, dtype=dtype, device=device)
        self.device = self.keys.device  # as tensors report it: "cuda" becomes "cuda:0"
        self.values = torch.zeros(B, S, H, self.value_dim, dtype=dtype, device=self.device)
        self.positions = torch.full((S,), -1, dtype=torch.long, device=self.device)
        self.held = torch.zeros(B, S, dtype=torch.bool, device=self.device)
        self.length = 0  # tokens seen so far, padding included
        self.started = False

    @torch.no_grad()
    def prefill(self, q, k, v, key_padding_mask=None) -> torch.Tensor:
        """Attend the prompt and keep its newest left + 1 keys and values.

        q, k: [B, T, H, d]; v: [B, T, H, d_v]; T >= 0. key_padding_mask: optional bool [B, T],
        True = padding (for left-padded prompts of different lengths: padding keys are never
        attended, a query that sees only padding outputs zeros). Returns [B, T, H, d_v].

        The prompt is attended in blocks of S = left + 1 queries, each against its own keys and
        the left keys before it: S x (2S - 1) scores a block, O(T S) work, never a T x T matrix.
        """
        if self.started:
            raise RuntimeError(
                "prefill() was already called: this cache holds a sequence; call reset() to start a new one"
            )
        T = self._check(q, k, v, "prefill")
        check_key_padding_mask(key_padding_mask, self.batch, T, self.device)
        padding = key_padding_mask
        if padding is None:
            padding = torch.zeros(self.batch, T, dtype=torch.bool, device=self.device)
        S, pos = self.slots, torch.arange(T, device=self.device)
        out = q.new_empty(self.batch, T, self.heads, self.value_dim)
        for start in range(0, T, S):
            stop = min(start + S, T)
            queries, keys = slice(start, stop), slice(max(0, start - self.left), stop)
            offset = pos[None, keys] - pos[queries, None]  # n x m: key - query
            allowed = (offset <= 0) & (offset >= -self.left) & ~padding[:, None, keys]  # B x n x m
            out[:, queries] = masked_attention(q[:, queries], k[:, keys], v[:, keys], allowed,
                                               self.scale)
        kept = slice(max(0, T - S), T)  # the newest S tokens of the prompt
        self._write(pos[kept], k[:, kept], v[:, kept], ~padding[:, kept])
        self.length, self.started = T, True
        return out

    @torch.no_grad()
    def step(self, q, k, v) -> torch.Tensor:
        """Attend one new token and keep it: q, k [B, 1, H, d], v [B, 1, H, d_v] -> [B, 1, H, d_v].

        Its key and value overwrite slot t mod S (the token t - S, outside every window from now
        on); then its query attends every held slot: exactly the keys t - left .. t.
        """
        if not self.started:
            raise RuntimeError(
                "step() before prefill(): call prefill() first (a prompt of length 0 if none)"
            )
        self._check(q, k, v, "step")
        t = torch.tensor([self.length], device=self.device)
        self._write(t, k, v, torch.ones(self.batch, 1, dtype=torch.bool, device=self.device))
        self.length += 1
        return masked_attention(q, self.keys, self.values, self.held[:, None, :], self.scale)

    @property
    def slots(self) -> int:
        """S = left + 1, the number of tokens the cache holds."""
        return self.left + 1

    def reset(self) -> None:
        """Forget the sequence; the next call must be :meth:`prefill`. The buffers are reused."""
        self.keys.zero_()
        self.values.zero_()
        self.positions.fill_(-1)
        self.held.zero_()
        self.length = 0
        self.started = False

    def _write(self, positions, k, v, real) -> None:
        """Put tokens ``positions`` [n] (k [B, n, H, d], v, real: bool [B, n]) in their slots."""
        slots = positions % self.slots
        self.keys.index_copy_(1, slots, k)
        self.values.index_copy_(1, slots, v)
        self.positions.index_copy_(0, slots, positions)
        self.held.index_copy_(1, slots, real)

    def _check(self, q, k, v, method: str) -> int:
        """Validate q, k, v against the cache (one token for ``step``); return their length T."""
        for name, x in (("q", q), ("k", k), ("v", v)):
            check_tensor(x, name, "[B, T, H, d]")
        if method == "step":
            T, what = 1, "one new token"
        else:
            T, what = (q.shape[1] if q.dim() == 4 else "T"), "the prompt"
        dims = (("q", q, self.head_dim, "d"), ("k", k, self.head_dim, "d"), ("v", v, self.value_dim, "d_v"))
        for name, x, last, last_name in dims:
            expected = (self.batch, T, self.heads, last)
            if tuple(x.shape) != expected:
                shape = f"[B, {'1' if method == 'step' else 'T'}, H, {last_name}]"
                raise ValueError(f"{method}: {name} must have shape {shape} = {list(expected)} ({what}), "
                                 f"got {list(x.shape)}")
            if x.dtype != self.dtype:
                raise TypeError(
                    f"{method}: {name} must have the cache's dtype {self.dtype}, got {x.dtype}"
                )
            if x.device != self.device:
                raise ValueError(
                    f"{method}: {name} must be on the cache's device {self.device}, got {x.device}"
                )
        return T
