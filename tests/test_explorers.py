"""The live explorers redraw when their sliders move, with the values the sliders show.

A running notebook calls the same ``live`` wiring: each slider change calls the drawing function
again with the new values. Here the drawing function is wrapped to record its calls and the
picture it drew; moving each slider must produce a call with that slider's new value and a
picture different from the one before. The kernel-free versions are checked in the browser by
tests/test_site.py; here, what their HTML holds and what the stored ones of each page weigh.
(What the explorers compute is checked in the chapters' cells.)
"""

import base64
import hashlib
import io
import pathlib
import re

import ipywidgets as widgets
import matplotlib
import nbformat

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from swa_tutorial.tutorial.figures import explorers  # noqa: E402

# The explorers and sliders of the chapters (04, 08, 09, 10 twice).
CASES = {
    "chunks_over_s": (explorers.draw_chunks_over_s,
                      dict(L=widgets.IntSlider(8, 2, 40), w=widgets.IntSlider(2, 1, 8))),
    "skew": (explorers.draw_skew,
             dict(stage=widgets.IntSlider(0, 0, 4), chunk_index=widgets.IntSlider(0, 0, 2))),
    "band_vs_dense": (explorers.draw_band_vs_dense, dict(token=widgets.IntSlider(1, 1, 8))),
    "token_attention": (explorers.draw_token_attention,
                        dict(token=widgets.IntSlider(8, 1, 16), window=widgets.IntSlider(2, 1, 6))),
    "unskew": (explorers.draw_unskew,
               dict(stage=widgets.IntSlider(0, 0, 4), block=widgets.IntSlider(1, 0, 3))),
}


def picture(fig) -> str:
    fig.canvas.draw()
    return hashlib.sha256(bytes(fig.canvas.buffer_rgba())).hexdigest()


@pytest.mark.parametrize("name", CASES)
def test_live_explorer_redraws_when_a_slider_moves(name):
    draw, sliders = CASES[name]
    calls = []

    def recording(fig, **params):
        draw(fig, **params)
        calls.append((params, picture(fig)))

    box = explorers.live(recording, **sliders)
    controls = box.children[0].children
    assert [c.value for c in controls] == [s.value for s in sliders.values()]
    assert len(calls) == 1 and calls[0][0] == {k: s.value for k, s in sliders.items()}
    for control in controls:
        before = len(calls)
        control.value = control.max
        assert len(calls) == before + 1
        params, image = calls[-1]
        assert params == {k: c.value for k, c in zip(sliders, controls)}
        assert image != calls[-2][1], f"{name}: moving {control.description} changed nothing"
    plt.close("all")


# --- The kernel-free explorers: what the static page shows, and what it weighs ---------------------

BOOK = pathlib.Path(__file__).resolve().parent.parent / "book"
# The stored kernel-free explorers of one page may weigh at most this many bytes of HTML (the
# pictures are most of it): a reader downloads every one of them with the page.
PAGE_EXPLORERS_MAX_BYTES = 150_000


def stored_explorers(path: pathlib.Path) -> list[int]:
    """The sizes of the HTML outputs of a notebook that are kernel-free explorers (or animations)."""
    sizes = []
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/html", "")
            text = "".join(text) if isinstance(text, list) else text
            if "kernel-free-explorer" in text or "anim-slider" in text:
                sizes.append(len(text.encode()))
    return sizes


@pytest.mark.parametrize("path", sorted(BOOK.glob("*.ipynb")), ids=lambda p: p.name)
def test_the_explorers_of_a_page_stay_light(path):
    sizes = stored_explorers(path)
    assert sum(sizes) <= PAGE_EXPLORERS_MAX_BYTES, (
        f"{path.name}: its kernel-free explorers weigh {sum(sizes)} bytes ({sizes}), more than "
        f"{PAGE_EXPLORERS_MAX_BYTES}; fewer or smaller frames (figsize, dpi), then re-execute it")


def test_kernel_free_shows_one_picture_per_value_under_a_slider():
    def draw(fig, n=1):
        ax = fig.add_subplot(1, 1, 1)
        ax.bar(range(n), range(1, n + 1))
        ax.set_title(f"n = {n}")

    values = [1, 2, 3]
    page = explorers.kernel_free(draw, "n", values, figsize=(3, 2)).data
    assert page == explorers.kernel_free(draw, "n", values, figsize=(3, 2)).data  # the same on every run
    images = re.findall(r'<img src="data:image/webp;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(values) and len(set(images)) == len(values)
    for image in images:  # each decodes, at the figure's size in pixels
        assert Image.open(io.BytesIO(base64.b64decode(image))).size == (3 * 86, 2 * 86)
    assert page.count('style="max-width:100%;display:none;"') == len(values) - 1  # the first shows
    assert f'type="range" min="0" max="{len(values) - 1}"' in page
    assert 'class="kernel-free-explorer"' in page and "<script>" in page
