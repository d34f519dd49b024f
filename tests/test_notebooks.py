"""Notebook hygiene: what nbval cannot see for itself.

nbval re-runs each notebook and compares fresh outputs with the stored ones, but a cell that was
never executed has nothing stored, so it passes without checking anything. These tests fail on
such cells, on stored errors a cell does not declare, on notebooks left out of the table of
contents, on a stale Colab setup cell, on outputs that leak paths of the machine that ran
them, and on live widgets left in the static page.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re

import nbformat
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
SKIP_TAGS = {"nbval-skip", "skip-execution"}
RAISES_TAGS = {"raises-exception", "nbval-raises-exception"}
# A path of the machine that executed the notebook: home and work folders, temporary files.
MACHINE_PATH = re.compile(r"(?<![\w.-])/(?:work|root|tmp|home)/")
# Embedded images are base64, whose alphabet contains '/': never search inside them.
BASE64_DATA = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]+")


def _execute_module():
    spec = importlib.util.spec_from_file_location("book_execute", BOOK / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXECUTE = _execute_module()
NOTEBOOKS = sorted(
    p for p in BOOK.rglob("*.ipynb") if "_build" not in p.parts and ".ipynb_checkpoints" not in p.parts
)


def _id(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def _tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _code_cells(path):
    nb = nbformat.read(path, as_version=4)
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _output_texts(output) -> list[str]:
    """Every text an output stores, images excepted (base64 data URIs removed from HTML)."""
    texts = []
    if "text" in output:
        texts.append(output["text"])
    for mime, data in output.get("data", {}).items():
        if mime.startswith("image/") and mime != "image/svg+xml":
            continue
        text = data if isinstance(data, str) else "".join(data) if isinstance(data, list) else str(data)
        texts.append(BASE64_DATA.sub("", text))
    if output.get("output_type") == "error":
        texts += [output.get("ename", ""), output.get("evalue", "")] + output.get("traceback", [])
    return texts


def test_notebooks_found():
    assert NOTEBOOKS, "no notebooks under book/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_every_code_cell_executed(path):
    unexecuted = [
        i
        for i, cell in _code_cells(path)
        if cell.source.strip()
        and not _tags(cell) & SKIP_TAGS
        and (cell.get("execution_count") is None or "outputs" not in cell)
    ]
    assert not unexecuted, f"{_id(path)}: code cells {unexecuted} were never executed; run book/execute.py on it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_undeclared_errors(path):
    for i, cell in _code_cells(path):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if _tags(cell) & RAISES_TAGS:
            assert errors, f"{_id(path)}: cell {i} is tagged to raise but stores no error"
        else:
            assert not errors, f"{_id(path)}: cell {i} stores an error ({errors[0].get('ename')}) it does not declare"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_listed_in_toc(path):
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [entry for part in toc.get("parts", [toc]) for entry in part.get("chapters", [])]
    listed = {toc["root"]} | {entry["file"] for entry in chapters}
    assert path.relative_to(ROOT).with_suffix("").as_posix() in listed, f"{_id(path)} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_colab_setup_cell_is_current(path):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    cells = _code_cells(path)
    assert cells, f"{_id(path)} has no code cell"
    first = cells[0][1]
    assert EXECUTE.SETUP_TAG in _tags(first), f"{_id(path)}: the first code cell must be tagged {EXECUTE.SETUP_TAG!r}"
    assert first.source == EXECUTE.SETUP_SOURCE.format(url=url), (
        f"{_id(path)}: the setup cell differs from what book/execute.py writes for {url}; re-execute the notebook"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_machine_paths_in_outputs(path):
    for i, cell in _code_cells(path):
        for output in cell.get("outputs", []):
            for text in _output_texts(output):
                match = MACHINE_PATH.search(text)
                assert not match, f"{_id(path)}: cell {i} stores a path of the machine: ...{text[max(0, match.start() - 40):match.end() + 40]}..."


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_live_widgets_are_left_out_of_the_static_page(path):
    """A widget needs a kernel: in the static page its cell would show code and nothing else.

    Its cell stays in the notebook (nbval runs it; Jupyter and Colab show it) and is tagged
    ``remove-cell`` for the book, whose kernel-free explorers stand in for it.
    """
    for i, cell in _code_cells(path):
        if any(WIDGET_VIEW in output.get("data", {}) for output in cell.get("outputs", [])):
            assert "remove-cell" in _tags(cell), f"{_id(path)}: cell {i} shows a live widget; tag it remove-cell"


# "Exercise 12.3 (★★)": the chapter's number, the exercise's place in it, one to three stars, at the
# start of the exercise's statement (a heading, or a bold lead-in).
EXERCISE_HEADING = re.compile(r"(?:#+ |\*\*)Exercise (\d+)\.(\d+) \((★{1,3})\)")
CHAPTERS = [p for p in NOTEBOOKS if re.match(r"\d\d_", p.name)]


def _exercise_headings(path) -> list[str]:
    """Each exercise's heading: in the markdown cell before its exercise cell, the last line that
    starts a heading or a bold lead-in (else its first line)."""
    nb = nbformat.read(path, as_version=4)
    headings = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "exercise" in _tags(cell):
            statement = next(c for c in reversed(nb.cells[:i]) if c.cell_type == "markdown")
            lines = statement.source.strip().splitlines()
            headings.append(([line for line in lines if re.match(r"#+ |\*\*", line)] or lines[:1])[-1])
    return headings


def test_exercises_are_numbered_by_chapter_and_marked_by_difficulty():
    """One scheme book-wide: 'Exercise N.k (★..)', N the chapter, k = 1, 2, ... in each chapter; and at
    least a third of all exercises two stars or more."""
    wrong, stars = [], []
    for path in CHAPTERS:
        chapter = int(path.name[:2])
        for k, heading in enumerate(_exercise_headings(path), start=1):
            match = EXERCISE_HEADING.match(heading)
            if not match or (int(match[1]), int(match[2])) != (chapter, k):
                wrong.append(f"{path.name}: {heading[:90]!r} (want 'Exercise {chapter}.{k} (★...)' to start it)")
            if match:
                stars.append(len(match[3]))
    assert not wrong, "exercise headings that do not match the scheme:\n" + "\n".join(wrong)
    harder = sum(s >= 2 for s in stars)
    assert 3 * harder >= len(stars), f"{harder} of {len(stars)} exercises have two stars or more: fewer than a third"
