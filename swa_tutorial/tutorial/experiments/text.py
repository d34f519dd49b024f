"""Real text: a byte-level model on Python's own standard library, validation loss against the window.

    python -m swa_tutorial.tutorial.experiments.text -o book/data/window-text.json

The text is every top-level ``*.py`` file of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), read as bytes in sorted order of file name; every tenth
file (the 10th, 20th, ..) is held out for validation, the rest is for training. The result
records the files, their byte counts and a SHA-256 of each part, so that a rerun can tell whether
it read the same text (another Python version ships other files).

For each window, the same model (2 layers, d_model 64, 4 heads) trains for the same number of
steps on the same batches (equal steps and tokens; a wider window does more attention work per
step, recorded as its time). The validation loss is the mean cross-entropy, in bits per byte, of
the next byte at positions L/2 .. L - 1 of held-out sequences, where every window up to L/2 is
full: the loss that a wider window could lower.
"""

from __future__ import annotations

import hashlib
import math
import platform
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F

from . import records
from .task import IGNORE
from .training import Run, build, optimise

SCHEMA = "swa-tutorial-window-text/1"
WINDOWS = (1, 4, 16, 63)  # keys to the left; 63 = L - 1: every earlier token
SEQ_LEN = 64
VALIDATION_SEQUENCES = 256
VALIDATION_SEED = 2_000_003
BYTES = 256


def stdlib_files() -> list[Path]:
    """The top-level ``*.py`` files of this interpreter's standard library, sorted by name."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"), key=lambda path: path.name)


def corpus(files: list[Path]) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(training bytes, validation bytes, a description): every tenth file held out."""
    train, validation = bytearray(), bytearray()
    for number, path in enumerate(files, start=1):
        (validation if number % 10 == 0 else train).extend(path.read_bytes())
    about = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "source": 'every top-level *.py file of sysconfig.get_paths()["stdlib"], sorted by name; '
                  "every tenth held out for validation",
        "files": [{"name": path.name, "bytes": path.stat().st_size, "validation": number % 10 == 0}
                  for number, path in enumerate(files, start=1)],
        "train_bytes": len(train),
        "validation_bytes": len(validation),
        "train_sha256": hashlib.sha256(train).hexdigest(),
        "validation_sha256": hashlib.sha256(validation).hexdigest(),
    }
    return _as_tensor(train), _as_tensor(validation), about


def _as_tensor(data: bytearray) -> torch.Tensor:
    """Bytes as a long tensor of values 0 .. 255."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # a writable copy: no warning


def sequences(data: torch.Tensor, count: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random slices [count, seq_len + 1] of ``data``: inputs and next bytes together."""
    starts = torch.randint(0, len(data) - seq_len - 1, (count,), generator=generator)
    return data[starts[:, None] + torch.arange(seq_len + 1)]


def next_byte_batch(data: torch.Tensor, batch: int, seq_len: int):
    """A ``next_batch`` for :func:`.training.optimise`: every position predicts the next byte."""
    def next_batch(generator: torch.Generator):
        chunk = sequences(data, batch, seq_len, generator)
        return chunk[:, :-1], chunk[:, 1:]
    return next_batch


@torch.no_grad()
def validation_bits(model, validation: torch.Tensor, seq_len: int) -> float:
    """Bits per byte at positions L/2 .. L - 1 of the fixed held-out sequences."""
    chunk = sequences(validation, VALIDATION_SEQUENCES, seq_len, torch.Generator().manual_seed(VALIDATION_SEED))
    labels = chunk[:, 1:].clone()
    labels[:, : seq_len // 2] = IGNORE
    losses = [F.cross_entropy(model(part[:, :-1]).flatten(0, 1), part_labels.flatten(), ignore_index=IGNORE)
              for part, part_labels in zip(chunk.split(64), labels.split(64))]
    return float(torch.stack(losses).mean()) / math.log(2)


def measure(window: int, seed: int, steps: int, train: torch.Tensor, validation: torch.Tensor) -> dict:
    """Train the byte model with ``window`` keys to the left; its row."""
    run = Run(layers=2, window=window, seed=seed, steps=steps)
    model = build(run, BYTES, BYTES)
    trained = optimise(run, model, next_byte_batch(train, run.batch, SEQ_LEN), SEQ_LEN)
    return {
        "window": window,
        "seed": seed,
        "validation_bits_per_byte": round(validation_bits(trained.model, validation, SEQ_LEN), 5),
        "final_train_loss_nats": round(trained.losses[-1], 5),
        "steps": steps,
        "seconds": round(trained.seconds, 2),
        "cpu_seconds": round(trained.cpu_seconds, 2),
    }


def main(argv=None) -> None:
    module = "swa_tutorial.tutorial.experiments.text"
    parser = records.parser(module, __doc__, steps=800)
    parser.add_argument("--windows", type=int, nargs="+", default=list(WINDOWS),
                        help=f"keys to the left (default {' '.join(map(str, WINDOWS))})")
    args = parser.parse_args(argv)
    result = records.header(SCHEMA, module, args.threads)
    train, validation, result["text"] = corpus(stdlib_files())
    result["seq_len"] = SEQ_LEN
    result["validation"] = {"sequences": VALIDATION_SEQUENCES, "positions": f"{SEQ_LEN // 2} .. {SEQ_LEN - 1}"}
    result["training"] = {key: value for key, value in Run(layers=2, window=1, steps=args.steps).describe().items()
                          if key not in ("window", "seed")}
    result["rows"] = []
    runs = [(window, seed) for seed in args.seeds for window in args.windows]
    records.collect(result, runs, lambda item: f"window {item[0]} seed {item[1]}",
                    lambda item: [measure(*item, args.steps, train, validation)], args.output)


if __name__ == "__main__":
    main()
