"""What `pip install swa-tutorial` gives: the sdist and the wheel built from this checkout, the
wheel installed into a fresh virtual environment outside it, beside torch and nothing else.

The build is the one a package index would get (``python -m build``: the sdist, then the wheel
built from the sdist), run without isolation, with the pinned setuptools, so that it needs no
network (``build`` checks that it lies within pyproject.toml's [build-system] range).

The fresh environment is a ``venv`` without pip into which pip installs the wheel. Its torch is
the running environment's: a ``.pth`` file puts a folder on its path that holds links to torch's
own files and to those of the packages torch requires, and to nothing else; pip sees torch's
metadata there, so ``torch>=2.5`` is satisfied as if ``pip install torch`` had run. This is
exactly what installing torch gives, in seconds instead of a download of hundreds of MB (and no
network in a test). Triton is left out, though the CUDA build of torch requires it on Linux:
torch imports without it, and its absence is one of the things checked here.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "swa_tutorial"
LEFT_OUT = {"triton"}  # never put beside the wheel: its absence is checked below
# What require() says when a package is missing (swa_tutorial/optional.py).
REQUIRE_MESSAGE = re.compile(r"^(\S+) needs (.+), which (?:is|are) not installed: pip install (.+)$")


def run(*args, **kwargs) -> str:
    """Run a command; its output, or a failure that shows what it printed."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def source_modules() -> set[str]:
    """The package's .py files in the source tree, as paths relative to the repository root."""
    return {
        p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py") if "__pycache__" not in p.parts
    }


def module_name(path: str) -> str:
    """swa_tutorial/a/b.py -> swa_tutorial.a.b, swa_tutorial/a/__init__.py -> swa_tutorial.a"""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def folders(paths) -> set[str]:
    return {str(PurePosixPath(p).parent) for p in paths}


# -- the build -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT)
    (sdist,), (wheel,) = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def metadata(dists) -> email.message.Message:
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(whl.read(name).decode())


def test_the_wheel_holds_every_module_of_every_package_folder(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        shipped = {n for n in whl.namelist() if n.startswith(f"{PACKAGE}/") and n.endswith(".py")}
    source = source_modules()
    assert folders(shipped) == folders(source), f"folders left out of the wheel: {folders(source) - folders(shipped)}"
    assert shipped == source, f"left out: {sorted(source - shipped)}; not in the source: {sorted(shipped - source)}"


def test_the_sdist_holds_the_package_its_license_and_its_readme(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = {PurePosixPath(*PurePosixPath(n).parts[1:]).as_posix() for n in sdist.getnames()}
    assert source_modules() <= names, sorted(source_modules() - names)
    assert {"LICENSE", "README.md", "pyproject.toml"} <= names


def test_the_wheel_declares_the_license_by_spdx_and_ships_its_file(dists, metadata):
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None  # the deprecated free-text field is gone
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert whl.read(name).decode() == (ROOT / "LICENSE").read_text()


def test_the_wheel_requires_only_torch(metadata):
    required = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    assert [str(r) for r in required if r.marker is None] == ["torch>=2.5"]


# -- a fresh environment with the wheel and torch --------------------------------------------------


def requirement_closure(names) -> dict[str, importlib.metadata.Distribution]:
    """The installed distributions of ``names`` and of everything they require, recursively (the
    requirements whose markers hold here, extras not asked for), without LEFT_OUT."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or name in LEFT_OUT:
            continue
        found[name] = dist = importlib.metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def expose(dists, folder: Path, site_packages: Path) -> None:
    """Put exactly the files of ``dists`` on the fresh environment's path: links to their top-level
    entries (packages, modules, metadata) in ``folder``, which a .pth file names."""
    folder.mkdir()
    for dist in dists:
        for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:  # not scripts, not bytecode
            (folder / top).symlink_to(Path(dist.locate_file(top)))
    (site_packages / f"_{folder.name}.pth").write_text(f"{folder}\n")


# The variables of this process less those that would reach into the checkout or this environment.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}


class FreshEnv:
    def __init__(self, home: Path):
        self.home = home
        venv.EnvBuilder(with_pip=False).create(home / "env")
        scripts = "Scripts" if os.name == "nt" else "bin"
        self.python = home / "env" / scripts / ("python.exe" if os.name == "nt" else "python")
        paths = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        self.site_packages = Path(self.run("-c", paths).strip())

    def run(self, *args) -> str:
        """The environment's python, isolated: no PYTHONPATH, no user site, not the working folder
        (which is outside the checkout anyway); Triton's interpreter on, as in the tests."""
        return run(self.python, "-I", *args, cwd=self.home, env={**CLEAN_ENV, "TRITON_INTERPRET": "1"})

    def pip(self, *args) -> str:
        """This environment's pip acting on the fresh environment with no configuration file read
        (so no index and no local folder of wheels but those given)."""
        env = {**CLEAN_ENV, "PIP_CONFIG_FILE": os.devnull}
        return run(sys.executable, "-m", "pip", "--python", self.python, *args, cwd=self.home, env=env)

    def imports(self) -> dict[str, dict | None]:
        """Every module of the installed package imported in turn: None, or how it failed."""
        return json.loads(self.run("-c", IMPORT_EVERY_MODULE))


# Imports every module of the installed package (found by walking its folder, so wherever the
# layout puts them; not the __main__ modules, commands that run when imported) and prints, per
# module, None or the exception its import raised. A module that fails leaves nothing in sys.modules, so the others are imported as they would be on their own.
IMPORT_EVERY_MODULE = textwrap.dedent(
    """
    import importlib, json, pathlib
    import swa_tutorial

    def failure(name):
        try:
            importlib.import_module(name)
        except Exception as error:
            return {"type": type(error).__name__, "message": str(error), "missing": getattr(error, "name", None)}

    top = pathlib.Path(swa_tutorial.__file__).parent
    names = sorted(".".join(("swa_tutorial",) + p.relative_to(top).with_suffix("").parts).replace(".__init__", "")
                   for p in top.rglob("*.py") if p.stem != "__main__")  # a __main__ runs its command
    print(json.dumps({"file": swa_tutorial.__file__, "modules": {name: failure(name) for name in names}}))
    """
)


@pytest.fixture(scope="module")
def fresh(dists, tmp_path_factory) -> FreshEnv:
    env = FreshEnv(tmp_path_factory.mktemp("fresh"))
    expose(requirement_closure(["torch"]).values(), env.home / "torch", env.site_packages)
    env.pip("install", "--no-index", "--no-cache-dir", dists["wheel"])
    env.pip("check")  # every requirement of what is installed is met (torch>=2.5 by the linked torch)
    return env


@pytest.fixture(scope="module")
def imported(fresh) -> dict:
    return fresh.imports()


def test_the_fresh_environment_holds_the_wheel_and_torch_only(fresh):
    listed = json.loads(fresh.pip("list", "--format", "json"))
    names = {canonicalize_name(d["name"]) for d in listed}
    assert names == {"swa-tutorial"} | set(requirement_closure(["torch"])), names
    for absent in ("triton", "numpy", "matplotlib", "ipywidgets", "transformers", "tqdm"):
        assert absent not in names


def test_the_installed_package_is_the_wheel_outside_the_checkout(fresh, imported, metadata):
    installed = Path(imported["file"])
    assert installed.is_relative_to(fresh.site_packages) and not installed.is_relative_to(ROOT), installed
    version = fresh.run("-c", "import swa_tutorial; print(swa_tutorial.__version__)").strip()
    source = re.search(r'^__version__ = "(.+)"$', (ROOT / PACKAGE / "__init__.py").read_text(), re.M).group(1)
    assert version == source == metadata["Version"]


def check_failures(failures: dict, metadata) -> None:
    """Each failure is require()'s message for a package that is not installed, naming an
    extra that installs it, or that package itself."""
    extras = {e: [Requirement(r).name for r in metadata.get_all("Requires-Dist") if f'extra == "{e}"' in r]
              for e in metadata.get_all("Provides-Extra")}
    for module, failure in failures.items():
        match = REQUIRE_MESSAGE.match(failure["message"])
        assert failure["type"] == "ModuleNotFoundError" and match, (module, failure)
        missing, install = failure["missing"], match.group(3)
        assert missing in match.group(2) and missing not in ("torch", PACKAGE), (module, failure)
        extra = re.fullmatch(r"'swa-tutorial\[(\w+)\]'", install)
        assert missing in extras[extra.group(1)] if extra else install == missing, (module, failure)


def test_every_module_imports_or_names_the_extra_it_needs(imported, metadata):
    modules = imported["modules"]
    assert set(modules) == {module_name(m) for m in source_modules() if not module_name(m).endswith(".__main__")}
    failures = {m: f for m, f in modules.items() if f}
    check_failures(failures, metadata)
    assert modules[PACKAGE] is None
    # Only the figures (matplotlib and NumPy: the plot extra) and the Triton kernels need more than
    # torch to be imported
    assert {f["missing"] for f in failures.values()} == {"matplotlib", "numpy", "triton"}, failures


ATTENTION_AGAINST_SDPA = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from swa_tutorial import sliding_window_attention

    torch.manual_seed(0)
    B, L, H, d = 2, 37, 3, 8
    q, k, v = (torch.randn(B, L, H, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, 30:] = True
    for window, (left, right) in ((4, (4, 4)), ((3, 1), (3, 1)), ((5, 0), (5, 0))):
        out = sliding_window_attention(q, k, v, window, key_padding_mask=pad)
        offset = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # j - i
        allowed = (offset >= -left) & (offset <= right) & ~pad[:, None, None, :]  # [B, 1, L, L]
        ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=allowed).transpose(1, 2)
        assert torch.allclose(out, ref, atol=1e-10), (window, (out - ref).abs().max())
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        expected = torch.autograd.grad(ref.square().sum(), (q, k, v))
        assert all(torch.allclose(g, e, atol=1e-10) for g, e in zip(grads, expected)), window
    print("ok")
    """
)


def test_sliding_window_attention_equals_sdpa_with_a_band_mask(fresh):
    assert fresh.run("-c", ATTENTION_AGAINST_SDPA).strip() == "ok"


def readme_code() -> list[str]:
    """The ```python blocks of the README, in order (the later ones use the first's tensors)."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def needs_transformers(block: str) -> bool:
    return re.search(r"^\s*(from|import) transformers\b", block, flags=re.M) is not None


def test_the_readme_code_runs(fresh):
    """Every ```python block of the README that needs only the package and torch runs where only
    they are installed; the block for transformers is the last and runs in the pinned
    environment (test_the_readme_code_runs_with_transformers)."""
    blocks = readme_code()
    torch_only = [b for b in blocks if not needs_transformers(b)]
    assert torch_only and blocks[: len(torch_only)] == torch_only, "the transformers block comes last"
    fresh.run("-c", "\n".join(torch_only))


def test_the_readme_code_runs_with_transformers():
    """All of the README's ```python blocks, in order, in the pinned environment (transformers
    installed, the package from the checkout): the Hugging Face block builds a tiny model from a
    config (no download) and generates past its window."""
    blocks = readme_code()
    assert any(needs_transformers(b) for b in blocks)
    run(sys.executable, "-c", "\n".join(blocks), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


MISSING_AT_CALL = textwrap.dedent(
    """
    import importlib, json, sys
    import torch
    import swa_tutorial

    failures = {}
    longformer = importlib.import_module(sys.argv[1])
    try:
        longformer.patch_hf_longformer(torch.nn.Module())
    except Exception as error:
        failures["patch_hf_longformer"] = {"type": type(error).__name__, "message": str(error),
                                           "missing": getattr(error, "name", None)}
    q = torch.randn(1, 8, 1, 4)
    try:
        swa_tutorial.sliding_window_attention(q, q, q, 2, backend="triton")
    except Exception as error:
        failures["triton"] = {"type": type(error).__name__, "message": str(error)}
    print(json.dumps(failures))
    """
)


def module_named(modules, last: str) -> str:
    """The one module of the package whose name ends in ``last`` (wherever the layout puts it)."""
    (name,) = [m for m in modules if m.rsplit(".", 1)[-1] == last]
    return name


def test_without_transformers_or_triton_the_calls_that_need_them_say_what_to_install(fresh, imported, metadata):
    failures = json.loads(fresh.run("-c", MISSING_AT_CALL, module_named(imported["modules"], "longformer")))
    check_failures({"patch_hf_longformer": failures["patch_hf_longformer"]}, metadata)
    assert failures["patch_hf_longformer"]["missing"] == "transformers"
    assert failures["triton"]["type"] == "RuntimeError"
    assert "backend 'triton' needs the triton package (pip install triton)" in failures["triton"]["message"]


@pytest.fixture
def with_plot_extra(fresh, metadata):
    """The fresh environment with the packages of the ``plot`` extra linked in too (as
    ``pip install 'swa-tutorial[plot]'`` would install them), for one test."""
    plot = [Requirement(r).name for r in metadata.get_all("Requires-Dist") if 'extra == "plot"' in r]
    closure = requirement_closure(plot)
    added = [d for name, d in closure.items() if name not in requirement_closure(["torch"])]
    folder = fresh.home / "plot"
    expose(added, folder, fresh.site_packages)
    yield fresh
    (fresh.site_packages / "_plot.pth").unlink()


LIVE_WITHOUT_IPYWIDGETS = textwrap.dedent(
    """
    import importlib, json, sys
    explorers = importlib.import_module(sys.argv[1])
    try:
        explorers.live(lambda fig: None)
    except Exception as error:
        print(json.dumps({"type": type(error).__name__, "message": str(error), "missing": getattr(error, "name", None)}))
    """
)


def test_with_the_plot_extra_the_figures_import_and_a_live_explorer_names_the_widgets_extra(
    with_plot_extra, imported, metadata
):
    modules = with_plot_extra.imports()["modules"]
    failures = {m: f for m, f in modules.items() if f}
    check_failures(failures, metadata)
    assert {f["missing"] for f in failures.values()} == {"triton"}, failures  # the figures import now
    failure = json.loads(with_plot_extra.run("-c", LIVE_WITHOUT_IPYWIDGETS, module_named(modules, "explorers")))
    check_failures({"live": failure}, metadata)
    assert failure["missing"] == "ipywidgets" and "swa-tutorial[widgets]" in failure["message"]
