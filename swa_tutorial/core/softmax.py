"""The softmax over the cells a query may attend, with its log-sum-exp.

Every path of the package ends its scores the same way: mask the cells a query may not attend,
take the softmax over the rest in float32 (float64 stays float64), and keep each row's
log-sum-exp ``lse = log sum_j exp(s_j)``, which lets two softmaxes over disjoint keys be merged
later (global attention) and a backward pass recompute the probabilities.

Three promises, whatever the scores are:

* a masked cell gets probability exactly 0 (it is set to -inf, not to a large negative number,
  so no finite valid score can lose to it);
* a row with no valid cell gets all zeros and lse = -inf, never NaN, and a zero gradient;
* a NaN or infinite *valid* score is not hidden: its row becomes NaN, as the definition says.
"""

from __future__ import annotations

import torch

from swa_tutorial.core.precision import accumulation_dtype


def lse_from_probs(row_max: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Each row's log-sum-exp from its softmax, with no second pass of exponentials: [...].

    row_max: [...], each row's largest score m; probs: [..., n], the softmax of the row. At the
    maximum the probability is exp(m - lse), so lse = m - log(max_j p_j), and max_j p_j >= 1 / n
    keeps the log finite. A row whose softmax is undefined (no finite score) or was zeroed gets a
    meaningless value here: its caller sets it to -inf.
    """
    return row_max - probs.amax(dim=-1).log()


def _softmax_and_lse(x, allowed, in_place: bool = True):
    """probs and lse of :func:`masked_softmax` for scores x in the accumulation dtype; ``in_place``
    zeroes the rows without a valid cell in the softmax's own buffer (inside the autograd
    function, where no graph is recorded), else in a new one (where autograd records the ops)."""
    # ``allowed`` stays as small as the caller made it (one mask for every head, say): the
    # tests on it cost a fraction of a pass over x. Selections use where and a multiply, not
    # masked_fill, which is several times slower on the CPU with a broadcast mask.
    sees_a_key = allowed.any(dim=-1, keepdim=True)  # ... x 1
    # A row with no valid cell is given all its cells (finite: no NaN), then zeroed.
    x = torch.where(allowed | ~sees_a_key, x, float("-inf"))
    row_max = x.amax(dim=-1)
    probs = x.softmax(dim=-1)
    del x  # (one score-sized buffer fewer at the peak: the masked scores go before the zeroing)
    # rows with no valid cell: finite probabilities times 0
    probs = probs.mul_(sees_a_key) if in_place else probs * sees_a_key
    lse = lse_from_probs(row_max, probs)  # +inf on rows with no valid cell (probs 0), set next
    lse = lse.masked_fill(~sees_a_key.squeeze(-1), float("-inf"))
    return probs, lse


class _MaskedSoftmax(torch.autograd.Function):
    """probs, lse = masked softmax of x over its last dim; backward saves only probs.

    With p the probabilities, the gradient of a loss through both outputs is
    dx = p * (dp - sum(p * dp) + dlse), since d lse / d x = p. Cells with p = 0 (masked, or rows
    with no valid cell) get a zero gradient. Forward mode (:meth:`jvp`) is the same Jacobian
    applied the other way: a change t of x changes lse by sum(p * t) and p by p * (t - sum(p * t)).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, allowed):
        return _softmax_and_lse(x, allowed)

    @staticmethod
    def setup_context(ctx, inputs, output):
        probs, _ = output
        ctx.save_for_backward(probs)
        ctx.save_for_forward(probs)

    @staticmethod
    def backward(ctx, d_probs, d_lse):
        (probs,) = ctx.saved_tensors
        row = (probs * d_probs).sum(dim=-1, keepdim=True)  # ... x 1
        return probs * (d_probs - row + d_lse.unsqueeze(-1)), None

    @staticmethod
    def jvp(ctx, x_tangent, _allowed_tangent):
        (probs,) = ctx.saved_tensors
        lse_tangent = (probs * x_tangent).sum(dim=-1)  # masked cells have p = 0: they add nothing
        return probs * (x_tangent - lse_tangent.unsqueeze(-1)), lse_tangent


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of ``scores`` over its last dim, over the cells where ``allowed`` is True only.

    scores: [..., n] (any float dtype; computed in :func:`~swa_tutorial.core.precision.accumulation_dtype`); allowed: bool,
    broadcastable to scores. Returns probs [..., n] and lse [...], both in the accumulation dtype:
    ``probs = exp(scores - lse)`` on allowed cells, exactly 0 elsewhere; a row with no allowed
    cell has probs 0 and lse = -inf. Differentiable through both outputs.
    """
    x = scores.to(accumulation_dtype(scores.dtype))
    if torch.compiler.is_dynamo_compiling():  # Dynamo cannot trace an autograd function with a jvp:
        return _softmax_and_lse(x, allowed, in_place=False)  # the same ops, differentiated by autograd
    return _MaskedSoftmax.apply(x, allowed)  # (the mask stays as small as it came: it broadcasts)


def add_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention sinks: one more logit per head in every row's softmax denominator, none in a
    numerator (GPT-OSS's learned sinks, one logit per head).

    out [..., H, d_v] and lse [..., H] of a softmax over the row's keys; sinks [H]. With the sink
    s_h the row's log-sum-exp becomes lse' = log(exp(lse) + exp(s_h)) and each weight shrinks by
    exp(lse - lse'), so out' = out exp(lse - lse'). A row with no key (lse = -inf) keeps out = 0
    and gets lse' = s_h: the sink takes all the weight. Differentiable in out, lse and sinks.
    """
    sink = sinks.to(lse.dtype)  # [H], broadcast over the rows
    with_sink = torch.logaddexp(lse, sink)
    return out * torch.exp(lse - with_sink)[..., None], with_sink
