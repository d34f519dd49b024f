"""The live explorers redraw when their sliders move, with the values the sliders show.

A running notebook calls the same ``live`` wiring: each slider change calls the drawing function
again with the new values. Here the drawing function is wrapped to record its calls and the
picture it drew; moving each slider must produce a call with that slider's new value and a
picture different from the one before. (The kernel-free versions are checked in the browser by
tests/test_site.py; what the explorers compute is checked in the chapters' cells.)
"""

import hashlib

import ipywidgets as widgets
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from swa_tutorial.tutorial.figures import explorers# noqa: E402

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
