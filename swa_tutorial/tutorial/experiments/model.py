"""A small pre-norm causal transformer whose attention is the package's sliding window.

Each layer: x + attention(norm(x)), then x + MLP(norm(x)) (pre-norm, as GPT-2 and most models
since). Positions enter through rotary embeddings (RoPE, :func:`rotary`), which make every score
depend on the tokens' offset j - i only, so a window is the same at every position. The
attention is :func:`swa_tutorial.sliding_window_attention` with the causal window (left, 0):
query i attends keys i - left .. i (left + 1 keys), or with ``dilation`` d on a head, keys
i - left d .. i in steps of d.

``global_token`` adds one Longformer global token (``swa_tutorial.longformer_attention``)
and keeps it causal (:func:`windowed_attention`): a global token may attend only to keys before
it, and be attended only by queries after it.
"""

from __future__ import annotations

import torch
from torch import nn

from swa_tutorial import longformer_attention, sliding_window_attention

GLOBAL_TOKENS = (None, "first", "last")


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of q or k [B, L, H, d] (d even), the same shape.

    Component pair (x_c, x_{c + d/2}) of position i turns by the angle i * base^(-2c/d), so
    q_i . k_j depends on i - j and not on i (RoFormer, Su et al. 2021).
    """
    L, d = x.shape[1], x.shape[3]
    half = d // 2
    frequency = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)  # [d/2]
    angle = torch.arange(L, dtype=torch.float32, device=x.device)[:, None] * frequency  # [L, d/2]
    cos, sin = angle.cos()[None, :, None, :].to(x.dtype), angle.sin()[None, :, None, :].to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def windowed_attention(q, k, v, left: int, dilation=1, global_token=None) -> torch.Tensor:
    """Causal sliding-window attention [B, L, H, d] -> [B, L, H, d], with one global token.

    ``global_token``:

    * None: query i attends keys i - left .. i (dilated by ``dilation``).
    * "first": token 0 (BOS) is global. Every query attends it besides its window, as
      ``longformer_attention`` computes; token 0's own global row would attend every key, the
      future included, so it is replaced by its causal row: key 0 alone, i.e. v_0. Token 0
      therefore never learns anything about the sequence: in a causal model a global token at
      the start can be attended, but it has nothing to tell.
    * "last": token L - 1 is global. Its row attends every key (all of them are before it), the
      global row of ``longformer_attention``; every other row is the window alone, since the
      global column would let earlier queries see the last token, a future one.

    Either way no output depends on a later token (tests/test_experiments.py checks it).
    """
    window = (left, 0)
    if global_token is None:
        return sliding_window_attention(q, k, v, window, dilation=dilation)
    if global_token not in GLOBAL_TOKENS:
        raise ValueError(f"global_token must be one of {GLOBAL_TOKENS}, got {global_token!r}")
    B, L = q.shape[:2]
    is_global = torch.zeros(B, L, dtype=torch.bool, device=q.device)
    if global_token == "first":
        is_global[:, 0] = True
        out = longformer_attention(q, k, v, window, global_mask=is_global, dilation=dilation)
        return torch.cat([v[:, :1], out[:, 1:]], dim=1)  # token 0: its causal row, v_0
    is_global[:, -1] = True
    local = sliding_window_attention(q, k, v, window, dilation=dilation)
    # only the last row of this call is kept: the global row over every key; the window of the
    # other rows is (0, 0), the cheapest, since they are discarded
    whole = longformer_attention(q, k, v, (0, 0), global_mask=is_global)
    return torch.cat([local[:, :-1], whole[:, -1:]], dim=1)


class Layer(nn.Module):
    """One pre-norm transformer layer: x [B, L, D] -> [B, L, D]."""

    def __init__(self, d_model: int, heads: int, left: int, dilation, global_token):
        super().__init__()
        self.heads, self.left, self.dilation, self.global_token = heads, left, dilation, global_token
        self.attention_norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, L, D] -> [B, L, D]: the attention, then the MLP, each added to x."""
        B, L, D = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(B, L, 3, self.heads, D // self.heads).unbind(dim=2)
        out = windowed_attention(rotary(q), rotary(k), v, self.left, self.dilation, self.global_token)
        x = x + self.proj(out.reshape(B, L, D))
        return x + self.mlp(self.mlp_norm(x))


class WindowedTransformer(nn.Module):
    """Token ids [B, L] -> logits [B, L, classes], every layer a causal window of ``window`` keys
    to the left (plus the token itself).

    Args:
        vocab: the number of token ids.
        classes: the number of outputs per position.
        layers: the number of layers.
        window: keys to the left, ``left`` >= 0, the same in every layer.
        dilation: an int, or one int per head (``sliding_window_attention``'s ``dilation``).
        global_token: None, "first" or "last" (:func:`windowed_attention`).
        d_model, heads: the width and the number of heads (d_model / heads per head, even).
    """

    def __init__(self, vocab: int, classes: int, *, layers: int, window: int, dilation=1, global_token=None,
                 d_model: int = 64, heads: int = 4):
        super().__init__()
        for name, value in (("vocab", vocab), ("classes", classes), ("layers", layers), ("window", window),
                            ("d_model", d_model), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if min(vocab, classes, layers, heads) < 1 or window < 0:
            raise ValueError("vocab, classes, layers and heads must be >= 1 and window >= 0, got "
                             f"{vocab}, {classes}, {layers}, {heads} and {window}")
        if d_model % heads or (d_model // heads) % 2:
            raise ValueError(f"d_model / heads must be an even integer (rotary pairs), got {d_model} / {heads}")
        if global_token not in GLOBAL_TOKENS:
            raise ValueError(f"global_token must be one of {GLOBAL_TOKENS}, got {global_token!r}")
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(Layer(d_model, heads, window, dilation, global_token) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> logits [B, L, classes]."""
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))
