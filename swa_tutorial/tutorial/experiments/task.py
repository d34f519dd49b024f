"""The long-range task: report the value of the one marked token, D positions back.

A sequence of L tokens starts with a beginning token (BOS), then filler tokens drawn uniformly
from V values; one position m >= 1 holds a *marked* token, value x in marked form. The answer
at every position i >= m is x, at distance D = i - m from the mark. Token ids::

    0 .. V - 1        a filler token of value 0 .. V - 1
    V .. 2V - 1       the marked token of value 0 .. V - 1
    2V                BOS

Nothing but the marked token says what x is, and the fillers are independent of it, so a model
whose position i cannot see position m (through any chain of attention) can do no better than
guess: the chance level is 1 / V. One layer of a causal window of w keys to the left finds the
mark when D <= w (the marked token itself announces it, so no second layer is needed to
recognise it, as it would be for "the token after a marker"); each further layer carries the
value another w positions (:mod:`.reach`).

Training labels every position from the mark on (dense supervision: about L / 2 labels per
sequence, at every distance); a *probe* puts the mark exactly D positions before the last token
and reads the last position only, the way the sweep measures accuracy at one distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # the label of a position before the mark (``cross_entropy``'s ignore_index)


@dataclass(frozen=True)
class Task:
    """The task's sizes: ``values`` V (the answer's classes) and the sequence length L."""

    values: int = 16
    seq_len: int = 256

    def __post_init__(self):
        for name in ("values", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if self.values < 2:
            raise ValueError(f"values must be >= 2, got {self.values}")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3 (BOS, the mark, one more token), got {self.seq_len}")

    @property
    def vocab(self) -> int:
        """The number of token ids, 2V + 1 (V fillers, V marked tokens, BOS)."""
        return 2 * self.values + 1

    @property
    def bos(self) -> int:
        """The id of the beginning token, 2V."""
        return 2 * self.values

    @property
    def chance(self) -> float:
        """The accuracy of a guess that knows nothing of the mark, 1 / V."""
        return 1.0 / self.values

    @property
    def max_distance(self) -> int:
        """The farthest distance a sequence holds, L - 2 (the mark at position 1, read at L - 1)."""
        return self.seq_len - 2


def _fillers(task: Task, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[B, L] tokens: BOS, then uniform filler values."""
    tokens = torch.randint(0, task.values, (batch, task.seq_len), generator=generator)
    tokens[:, 0] = task.bos
    return tokens


def training_batch(task: Task, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch with the mark at a uniform position m in 1 .. L - 1 of each sequence.

    Returns (tokens [B, L], labels [B, L]): labels[b, i] is the marked value for i >= m, else
    ``IGNORE``.
    """
    tokens = _fillers(task, batch, generator)
    marks = torch.randint(1, task.seq_len, (batch,), generator=generator)
    values = torch.randint(0, task.values, (batch,), generator=generator)
    rows = torch.arange(batch)
    tokens[rows, marks] = task.values + values
    after = torch.arange(task.seq_len)[None, :] >= marks[:, None]
    labels = torch.where(after, values[:, None], torch.full_like(tokens, IGNORE))
    return tokens, labels


def probe_batch(task: Task, distance: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch with the mark exactly ``distance`` positions before the last token.

    Returns (tokens [B, L], answers [B]): the value the last position must report.
    """
    if isinstance(distance, bool) or not isinstance(distance, int):
        raise TypeError(f"distance must be an int, got {type(distance).__name__}")
    if not 0 <= distance <= task.max_distance:
        raise ValueError(f"distance must be in 0 .. {task.max_distance} (L - 2), got {distance}")
    tokens = _fillers(task, batch, generator)
    answers = torch.randint(0, task.values, (batch,), generator=generator)
    tokens[:, task.seq_len - 1 - distance] = task.values + answers
    return tokens, answers


def show(task: Task, tokens: torch.Tensor) -> str:
    """One sequence [L] as text: fillers as their value, the mark as [x], BOS as ^."""
    words = []
    for t in tokens.tolist():
        if t == task.bos:
            words.append("^")
        elif t >= task.values:
            words.append(f"[{t - task.values}]")
        else:
            words.append(str(t))
    return " ".join(words)
