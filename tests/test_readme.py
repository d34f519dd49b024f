"""The README's set-up is what CI runs (.ci/run holds exactly its commands, in its order), and its
command for PyTorch's CPU build installs the version the environment pins."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def commands(text: str) -> list[str]:
    """The command lines of a shell text: neither blank nor comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def readme_blocks() -> list[list[str]]:
    """The commands of each ```bash block of the README, in order."""
    readme = (ROOT / "README.md").read_text()
    return [commands(block) for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)]


def test_ci_runs_the_readme_set_up_exactly():
    blocks = readme_blocks()
    main = blocks[0]  # commands 1 and 2: set up and build, then test
    chromium = next(b for b in blocks if any("apt-get install" in c for c in b))
    ci = commands((ROOT / ".ci" / "run").read_text())
    assert ci[:2] == ["set -euo pipefail", 'cd "$(dirname "$0")/.."'], ci[:2]
    assert ci[2:] == chromium + main, "\n".join(ci[2:])


def test_the_set_up_needs_no_root_but_for_chromium():
    """Only the Chromium command (Debian's package manager) needs root; commands 1 and 2 do not."""
    assert not any(re.search(r"\b(apt-get|apt|sudo|dnf|yum)\b", c) for c in readme_blocks()[0])


def test_every_cpu_torch_command_installs_the_pinned_torch():
    pinned = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), flags=re.M).group(1)
    places = [ROOT / "README.md", ROOT / ".github" / "workflows" / "pages.yml"]
    found = [(p.name, v) for p in places for v in re.findall(r"pip install torch==(\S+) --index-url", p.read_text())]
    assert found and all(v == pinned for _, v in found), (pinned, found)
