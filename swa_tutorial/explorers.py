"""Explorers: one drawing function, shown two ways.

* :func:`live` wraps it in ipywidgets sliders; it redraws when a slider moves (needs a kernel).
* :func:`kernel_free` renders it once per value of one parameter into a matplotlib animation
  with its own slider (``to_jshtml``), which keeps working in the static HTML of the book.

A drawing function has the signature ``draw(fig, **params)`` and draws onto the empty figure it
is given. The chapters compute what it draws with functions of their own in checked cells,
because nbval compares neither images nor widget views.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.animation import FuncAnimation


def live(draw, figsize=(8, 4), **sliders):
    """ipywidgets controls for ``draw(fig, **params)``; pass ipywidgets sliders or fixed values."""
    import ipywidgets as widgets  # only a live notebook needs ipywidgets

    out = widgets.Output()

    def redraw(**params):
        with out:
            out.clear_output(wait=True)
            fig = plt.figure(figsize=figsize)
            draw(fig, **params)
            plt.show()

    controls = widgets.interactive(redraw, **sliders)
    return widgets.VBox([widgets.HBox(controls.children[:-1]), out])


def kernel_free(draw, name, values, figsize=(8, 4), dpi=72, **fixed):
    """A self-contained HTML animation: one frame of ``draw`` per value of parameter ``name``.

    Returns an ``IPython.display.HTML`` whose slider steps through ``values`` without a kernel.
    """
    from IPython.display import HTML

    fig = plt.figure(figsize=figsize, dpi=dpi)
    values = list(values)

    def frame(i):
        fig.clear()
        draw(fig, **{name: values[i]}, **fixed)

    anim = FuncAnimation(fig, frame, frames=len(values), interval=1000)
    html = anim.to_jshtml(default_mode="once")
    plt.close(fig)
    return HTML(html)
