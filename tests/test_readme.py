"""The README's set-up is what CI runs (.ci/run holds exactly its commands, in its order, and the
GitHub workflow runs .ci/run after the README's step for a machine without a GPU), and its
commands for PyTorch's CPU build install the version the environment pins."""

from __future__ import annotations

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CPU_TORCH = re.compile(r"pip install torch==(\S+) --index-url https://download\.pytorch\.org/whl/cpu")


def commands(text: str) -> list[str]:
    """The command lines of a shell text: neither blank nor comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def readme_blocks() -> list[list[str]]:
    """The commands of each ```bash block of the README, in order."""
    readme = (ROOT / "README.md").read_text()
    return [commands(block) for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)]


def block_with(*words: str) -> list[str]:
    """The one ```bash block of the README in which each of ``words`` occurs."""
    (block,) = [b for b in readme_blocks() if all(any(w in c for c in b) for w in words)]
    return block


MAIN = block_with("pip install -r requirements.txt", "-m pytest")  # commands 1 and 2


def cpu_first() -> list[str]:
    """The block just before commands 1 and 2: a venv with PyTorch's CPU build, nothing else."""
    blocks = readme_blocks()
    return blocks[blocks.index(MAIN) - 1]


def test_ci_runs_the_readme_set_up_exactly():
    chromium = block_with("apt-get install")
    platforms = block_with("tools/check_platforms.py")
    ci = commands((ROOT / ".ci" / "run").read_text())
    assert ci[:2] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."'], ci[:2]
    assert ci[2:] == chromium + MAIN + platforms, "\n".join(ci[2:])


def test_the_cpu_only_step_comes_before_the_commands():
    first = cpu_first()
    assert first[0] == "python3 -m venv .venv" and len(first) == 2 and CPU_TORCH.search(first[1]), first


def test_the_set_up_needs_no_root_but_for_chromium():
    """Only the Chromium command (Debian's package manager) needs root; the others do not."""
    for block in (cpu_first(), MAIN):
        assert not any(re.search(r"\b(apt-get|apt|sudo|dnf|yum)\b", c) for c in block), block


def test_the_workflow_runs_the_cpu_step_then_ci_on_every_push():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "tests.yml").read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    job = workflow["jobs"]["tests"]
    assert job["container"].startswith("python:3.11")  # Debian, as .ci/run expects, root in it
    run = [c for step in job["steps"] if "run" in step for c in commands(step["run"])]
    assert run == cpu_first() + ["bash .ci/run"], run


def test_every_cpu_torch_command_installs_the_pinned_torch():
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), flags=re.M).group(1)
    places = [ROOT / "README.md"] + sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    found = [(p.name, v) for p in places for v in CPU_TORCH.findall(p.read_text())]
    assert len(found) >= 4 and all(v == pinned for _, v in found), (pinned, found)
