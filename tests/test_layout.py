"""The package's layout holds its rules, read from the source with ``ast`` (nothing is imported).

The package is a house with rooms by layer (the README's "Package layout"):

    core < steps, reference < backends < attention (the entry point)
         < integrations, decoding, distributed < tutorial, bench

1. Imports point down only (or stay within a layer); an ``__init__.py`` re-exports only from below
   or from its own folder.
2. No module imports a ``_``-prefixed name from another module of the package.
3. No two modules share a file name (``__init__``/``__main__`` aside); no function is named as
   its own module.
4. No module is over 450 lines.
5. One window-mask builder: only ``core/windows.py`` builds the L x L table of key-minus-query
   offsets that every dense window mask starts from.
6. Nothing in the installed package runs repository tooling (git archive, subprocess git other
   than reading the commit hash for provenance).
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "swa_tutorial"
MAX_LINES = 450

# Each room and its layer: a module may import only from its own layer or a lower one.
LAYERS = {
    "core": 0,
    "steps": 1,
    "reference": 1,
    "backends": 2,
    "attention": 3,
    "integrations": 4,
    "decoding": 4,
    "distributed": 4,
    "tutorial": 5,
    "bench": 5,
}


def modules() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str | None:
    """The room of ``swa_tutorial.x.y``: x, or None for the package root (``swa_tutorial``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def sources() -> dict[pathlib.Path, str]:
    return {path: path.read_text() for path in modules()}


def imports(path: pathlib.Path, source: str):
    """(line, imported module, names) for every import of the package in ``source`` (the text of
    ``path``), relative ones resolved."""
    tree = ast.parse(source)
    here = dotted(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "swa_tutorial" or module.startswith("swa_tutorial."):
                yield node.lineno, module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("swa_tutorial"):
                    yield node.lineno, alias.name, []


def test_every_room_has_a_layer():
    rooms = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert rooms == set(LAYERS), f"rooms without a layer: {rooms - set(LAYERS)}; layers without a room: {set(LAYERS) - rooms}"


def upward_imports(texts: dict[pathlib.Path, str]) -> list[str]:
    found = []
    for path, source in texts.items():
        mine = room(dotted(path))
        if mine is None:  # the package root re-exports the public names of every layer
            continue
        for line, module, names in imports(path, source):
            targets = [module] if room(module) else [f"swa_tutorial.{n}" for n in names]
            for target in targets:
                theirs = room(target)
                if theirs in LAYERS and LAYERS[theirs] > LAYERS[mine]:
                    found.append(f"{path.relative_to(ROOT)}:{line} ({mine}, layer {LAYERS[mine]}) imports "
                                 f"{target} ({theirs}, layer {LAYERS[theirs]})")
    return found


def test_imports_point_down_only():
    assert upward_imports(sources()) == []


@pytest.mark.parametrize("line", ["from swa_tutorial.attention import attend",
                                  "from ..attention import attend", "from swa_tutorial import attention"])
def test_the_rule_catches_an_upward_import(line):
    """The check itself: a core module importing the entry point, in any spelling, is reported."""
    texts = sources()
    windows = PACKAGE / "core" / "windows.py"
    texts[windows] += f"\n{line}\n"
    assert [f for f in upward_imports(texts) if "core/windows.py" in f] != []


def test_no_private_name_crosses_modules():
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name} from {module}"
        for path, source in sources().items()
        for line, module, names in imports(path, source)
        for name in names
        if name.startswith("_") and name != "__version__"
    ]
    assert found == []


def test_file_names_are_unique_and_no_function_is_named_as_its_module():
    names: dict[str, list[str]] = {}
    for path in modules():
        if path.stem not in ("__init__", "__main__"):
            names.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert {n: ps for n, ps in names.items() if len(ps) > 1} == {}
    clashes = [
        f"{path.relative_to(ROOT)}: def {node.name}"
        for path in modules()
        for node in ast.parse(path.read_text()).body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == path.stem
    ]
    assert clashes == []


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_the_limit(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def outer_differences(source: str) -> list[int]:
    """Lines that build an L x L table of key-minus-query offsets, ``a[None, :] - b[:, None]`` (or
    the transpose), the first step of every dense window mask."""

    def axis(node, first: bool) -> bool:  # x[None, :] (first) or x[:, None]
        if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple) and len(node.slice.elts) == 2):
            return False
        none, colon = node.slice.elts if first else node.slice.elts[::-1]
        return isinstance(none, ast.Constant) and none.value is None and isinstance(colon, ast.Slice)

    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub)
        and ((axis(node.left, True) and axis(node.right, False)) or (axis(node.left, False) and axis(node.right, True)))
    ]


def test_one_window_mask_builder():
    builders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path, source in sources().items()
        if path.relative_to(PACKAGE).as_posix() != "core/windows.py"
        for line in outer_differences(source)
    ]
    assert builders == [], "build dense masks with swa_tutorial.core.windows"


def test_the_mask_rule_sees_a_builder():
    assert outer_differences("pos = torch.arange(8)\noffset = pos[None, :] - pos[:, None]\n") == [2]
    assert outer_differences("i = np.arange(8)\nd = i[:, None] - i[None, :]\n") == [2]
    assert outer_differences(pathlib.Path(PACKAGE / "core" / "windows.py").read_text()) != []


def test_the_package_runs_no_repository_tooling():
    found = []
    for path in modules():
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            code = line.split("#")[0]
            if "tarfile" in code or ('"git"' in code and "rev-parse" not in code and "--porcelain" not in code):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []
