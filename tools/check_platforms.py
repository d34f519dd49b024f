"""Does requirements.txt resolve where readers are? A check for the platforms CI does not run on.

    python tools/check_platforms.py

Resolves requirements.txt with uv (pinned there) for Python 3.11 on Linux x86-64 and aarch64,
macOS 14 on Apple silicon and Windows x86-64, from wheels only, each platform with its own
environment markers (pip evaluates markers for the machine it runs on even when given
--platform, so it cannot make this check). Each resolution must hold torch at its pinned version,
and triton exactly where requirements.txt's marker installs it. Needs the network (PyPI); CI runs
it after the tests. Exits 1 if a platform does not resolve.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from packaging.requirements import Requirement
from uv import find_uv_bin

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = "3.11"  # the oldest Python the pinned environment supports (numpy 2.4)
# name: (uv's --python-platform, the environment markers of that platform)
PLATFORMS = {
    "Linux x86-64": ("x86_64-manylinux_2_28", dict(sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix")),
    "Linux aarch64": ("aarch64-manylinux_2_28", dict(sys_platform="linux", platform_system="Linux", platform_machine="aarch64", os_name="posix")),
    "macOS 14, Apple silicon": ("aarch64-apple-darwin", dict(sys_platform="darwin", platform_system="Darwin", platform_machine="arm64", os_name="posix")),
    "Windows x86-64": ("x86_64-pc-windows-msvc", dict(sys_platform="win32", platform_system="Windows", platform_machine="AMD64", os_name="nt")),
}
MACOS = "14.0"  # torch 2.13.0's macOS wheels are built for macOS 14


def requirement_lines() -> list[str]:
    """requirements.txt's requirements, less ``-e .``: the package is built here, not fetched, and
    its one dependency, torch, is pinned in the file."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith(("#", "-e"))]


def pinned() -> dict[str, Requirement]:
    return {r.name: r for r in map(Requirement, requirement_lines())}


def resolve(python_platform: str) -> dict[str, str]:
    """uv's resolution of requirements.txt for one platform: {name: version}."""
    command = [find_uv_bin(), "pip", "compile", "-", "--python-platform", python_platform,
               "--python-version", PYTHON, "--only-binary", ":all:", "--no-header", "--no-annotate", "--quiet"]
    done = subprocess.run(command, input="\n".join(requirement_lines()), capture_output=True, text=True,
                          env={**os.environ, "MACOSX_DEPLOYMENT_TARGET": MACOS})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip())
    return dict(re.findall(r"^([\w.-]+)==(\S+)$", done.stdout, flags=re.M))


def check(name: str) -> str:
    """One platform's verdict: what it resolved to, or why it fails."""
    python_platform, environment = PLATFORMS[name]
    requirements = pinned()
    try:
        versions = resolve(python_platform)
    except RuntimeError as error:
        return f"FAILS: {error}"
    wanted_triton = requirements["triton"].marker.evaluate(environment)
    if versions.get("torch") not in requirements["torch"].specifier:
        return f"FAILS: torch resolved to {versions.get('torch')}, not {requirements['torch'].specifier}"
    if ("triton" in versions) != wanted_triton:
        return f"FAILS: triton {'missing' if wanted_triton else 'resolved'} ({versions.get('triton')})"
    triton = f"triton {versions['triton']}" if "triton" in versions else "no triton"
    return f"ok: {len(versions)} packages, torch {versions['torch']}, {triton}"


def main() -> int:
    verdicts = {name: check(name) for name in PLATFORMS}
    for name, verdict in verdicts.items():
        print(f"{name:<24} {verdict}")
    return 0 if all(v.startswith("ok") for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
