"""Train one configuration on the marked-token task and measure its accuracy at each distance.

A configuration (:class:`Run`) is a model shape (layers, window, dilation, global token) and a
seed. Everything random comes from that seed: the initial weights (``torch.manual_seed``), the
training batches and, with a seed of their own, the probes. Training uses AdamW with a linear
warm-up and a cosine decay, cross-entropy on every labelled position (:func:`.task.training_batch`).

Every model trains on sequences just longer than its windows' reach (:func:`training_length`):
without a global token the answer at any position depends on at most the ``farthest`` tokens
before it, and rotary positions make every window alike, so a longer sequence would teach it
nothing more, while its labels beyond the reach (unlearnable: pure noise in the gradient) would
drown those within it. A model with a global last token trains at the same length; probed on
longer sequences, its global row then meets distances it never met in training.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .model import WindowedTransformer
from .reach import farthest
from .task import IGNORE, Task, probe_batch, training_batch

PROBE_SEED = 1_000_003  # the probes' generator seed, offset by the run's seed: held-out sequences


@dataclass(frozen=True)
class Run:
    """One model to train: its shape, seed and optimisation. ``dilation``: an int or a tuple,
    one per head."""

    layers: int
    window: int
    dilation: int | tuple = 1
    global_token: str | None = None
    seed: int = 0
    steps: int = 400
    batch: int = 16
    lr: float = 1e-2
    warmup: int = 30
    d_model: int = 64
    heads: int = 4

    def farthest(self) -> int:
        """The farthest distance the stack carries without a global token (:mod:`.reach`)."""
        return farthest([self.window] * self.layers, [self.dilation] * self.layers)

    def describe(self) -> dict:
        """The run's settings as JSON-ready values."""
        info = asdict(self)
        info["dilation"] = list(self.dilation) if isinstance(self.dilation, tuple) else self.dilation
        return info


@dataclass
class Trained:
    """A trained model, with the length it trained on, its training time (wall clock and the
    process's CPU time: on a shared machine the second is the steadier) and its losses."""

    model: WindowedTransformer
    seq_len: int
    seconds: float
    cpu_seconds: float
    losses: list = field(default_factory=list)  # the mean loss of each tenth of training


def training_length(run: Run, probe_len: int) -> int:
    """Sequence length to train on: the windows' farthest reach plus 32, at least 64, at most the
    probe's length."""
    return min(probe_len, max(64, run.farthest() + 32))


def build(run: Run, vocab: int, classes: int) -> WindowedTransformer:
    """The run's model for ``vocab`` token ids and ``classes`` outputs, initialised from its seed."""
    torch.manual_seed(run.seed)
    return WindowedTransformer(vocab, classes, layers=run.layers, window=run.window,
                               dilation=list(run.dilation) if isinstance(run.dilation, tuple) else run.dilation,
                               global_token=run.global_token, d_model=run.d_model, heads=run.heads)


def learning_rate(run: Run, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``steps``."""
    return run.lr * min(1.0, (step + 1) / run.warmup) * 0.5 * (1 + math.cos(math.pi * step / run.steps))


def optimise(run: Run, model: WindowedTransformer, next_batch, seq_len: int) -> Trained:
    """Train ``model`` for ``run.steps`` steps on ``next_batch(generator)`` -> (tokens [B, L],
    labels [B, L], ``IGNORE`` where unlabelled), the generator seeded with the run's seed.
    Returns it in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(run.seed)
    losses, tenth, running = [], max(1, run.steps // 10), 0.0
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(run.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(run, step)
        tokens, labels = next_batch(generator)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()
        if (step + 1) % tenth == 0:
            losses.append(running / tenth)
            running = 0.0
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return Trained(model.eval(), seq_len, seconds, cpu_seconds, losses)


def train(run: Run, task: Task) -> Trained:
    """Train the run's model on batches of the task at :func:`training_length`."""
    seq_len = training_length(run, task.seq_len)
    train_task = Task(values=task.values, seq_len=seq_len)
    return optimise(run, build(run, task.vocab, task.values),
                    lambda generator: training_batch(train_task, run.batch, generator), seq_len)


@torch.no_grad()
def accuracy(model: WindowedTransformer, task: Task, distance: int, examples: int, seed: int) -> float:
    """The fraction of ``examples`` held-out probes at ``distance`` whose last position is right."""
    generator = torch.Generator().manual_seed(PROBE_SEED + 7919 * seed + distance)
    tokens, answers = probe_batch(task, distance, examples, generator)
    return (model(tokens)[:, -1].argmax(dim=-1) == answers).float().mean().item()
