"""Execute the chapters headless and store their outputs: the outputs the book shows and nbval checks.

    python book/execute.py                  # every notebook listed in _toc.yml, in order
    python book/execute.py book/03_loop.ipynb

Each notebook runs top to bottom in a fresh kernel with the notebook's folder as working
directory; widget state is saved with it so the rendered page can draw the controls. Before
running, the first code cell (tagged ``colab-setup``) is rewritten from the repository URL in
_config.yml, so that a chapter opened in Colab installs the package from that one place.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
SETUP_TAG = "colab-setup"
SETUP_SOURCE = """\
try:
    import swa_tutorial
except ImportError:  # in Colab: install the book's package first
    %pip install --quiet git+{url}
    import swa_tutorial"""


def toc_notebooks() -> list[pathlib.Path]:
    """The notebooks of _toc.yml, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [entry for part in toc.get("parts", [toc]) for entry in part.get("chapters", [])]
    files = [toc["root"]] + [entry["file"] for entry in chapters]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").exists()]


def execute(path: pathlib.Path) -> None:
    """Run one notebook in place, setup cell first rewritten from _config.yml."""
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if SETUP_TAG in cell.metadata.get("tags", []):
            cell.source = SETUP_SOURCE.format(url=url)
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        record_timing=False,  # no timestamps: a re-run changes only what the cells print
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    nbformat.write(nb, path)
    print(f"executed {path.relative_to(ROOT)}")


if __name__ == "__main__":
    for p in [pathlib.Path(a).resolve() for a in sys.argv[1:]] or toc_notebooks():
        execute(p)
