"""Triton runs where requirements.txt installs it, and is skipped, saying why, only where it does not.

requirements.txt pins triton with an environment marker (Linux x86-64 and aarch64: the only
platforms with triton wheels). Where that marker leaves triton out and it is not installed, the
tests marked ``triton`` and the chapters that import triton are skipped with the reason. Where the
marker holds, nothing is skipped: a missing triton fails them, so CI cannot pass without them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import re

import pytest
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent
SKIP_REASON = "needs triton, which requirements.txt installs only on Linux (x86-64, aarch64): it has no wheels here"


def triton_requirement() -> Requirement:
    """requirements.txt's line for triton, with its marker."""
    (line,) = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if re.match(r"triton\b", line)]
    return Requirement(line)


@functools.cache
def imports_triton(notebook: pathlib.Path) -> bool:
    """Whether a chapter imports triton in one of its code cells."""
    cells = json.loads(notebook.read_text())["cells"]
    sources = ("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return any(re.search(r"^\s*(import|from) triton\b", s, flags=re.M) for s in sources)


def pytest_collection_modifyitems(config, items):
    marker = triton_requirement().marker
    if importlib.util.find_spec("triton") is not None or marker is None or marker.evaluate():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("triton") or (item.path.suffix == ".ipynb" and imports_triton(item.path)):
            item.add_marker(skip)
