"""A kernel-free explorer: one drawing per value of a parameter, and a slider that steps through them.

The static page of the book runs no Python, so an explorer there is precomputed: ``draw(fig,
**params)`` is called once per value and the page shows one picture at a time under an HTML
slider (a few lines of JavaScript swap them). The pictures are the page's weight, so each is
reduced to a palette of at most ``PALETTE_COLORS`` colours (a drawing of the book is flat
colours, text and lines, which such a palette keeps) and stored as a lossless WebP, which every
current browser shows: about a fifth of the bytes of the full-colour PNG frames of matplotlib's
``to_jshtml``. Nothing else is repeated per explorer: no player buttons, no icon font, no style
sheet.

The HTML is the same on every run (its element id is a hash of the frames), so re-executing a
chapter changes its stored output only where a picture changes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json

from swa_tutorial.core.optional import require

require("matplotlib", by=__name__, extra="plot")

import matplotlib.pyplot as plt

# The colours a frame keeps. A drawing of the book uses about a dozen flat colours; the rest of
# its few hundred are the anti-aliased edges of text and lines, which 32 shades still draw smooth.
PALETTE_COLORS = 32


def frame_webp(fig, colors: int = PALETTE_COLORS) -> bytes:
    """The figure as a lossless WebP of an adaptive palette of at most ``colors`` colours (no dithering)."""
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    image = Image.open(buffer).convert("RGB")
    quantized = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    quantized.convert("RGB").save(out, format="webp", lossless=True, quality=100, method=4)
    return out.getvalue()


def explorer_html(frames: list[bytes], name: str, labels: list[str]) -> str:
    """HTML showing ``frames`` (WebP bytes) one at a time under a slider named ``name``.

    Every frame is an <img>; all but the current one are hidden, so the first shows even where
    scripts do not run. The slider's label shows ``labels[i]`` for frame i.
    """
    if len(frames) != len(labels) or not frames:
        raise ValueError(f"frames and labels must be as many, at least one: got {len(frames)} and {len(labels)}")
    key = "kfe-" + hashlib.sha256(b"".join(frames)).hexdigest()[:16]
    images = "\n".join(
        f'<img src="data:image/webp;base64,{base64.b64encode(image).decode()}" alt="{html.escape(name)} = '
        f'{html.escape(label)}" style="max-width:100%;{"" if i == 0 else "display:none;"}">'
        for i, (image, label) in enumerate(zip(frames, labels))
    )
    script = (
        f"(function () {{ const root = document.getElementById({json.dumps(key)}); "
        "const images = root.querySelectorAll('img'); const slider = root.querySelector('input'); "
        "const shown = root.querySelector('output'); const labels = JSON.parse(root.dataset.labels); "
        "slider.addEventListener('input', function () { const i = Number(slider.value); "
        "images.forEach(function (img, k) { img.style.display = k === i ? '' : 'none'; }); "
        "shown.textContent = labels[i]; }); })();"
    )
    return (
        f'<div class="kernel-free-explorer" id="{key}" data-labels="{html.escape(json.dumps(labels))}">\n'
        f"{images}\n"
        f'<div><label>{html.escape(name)} <input type="range" min="0" max="{len(frames) - 1}" step="1" '
        f'value="0" aria-label="{html.escape(name)}" style="vertical-align:middle;width:16em;"></label> '
        f"<output>{html.escape(labels[0])}</output></div>\n"
        f"<script>{script}</script>\n"
        "</div>"
    )


def kernel_free(draw, name, values, figsize=(8, 4), dpi=86, **fixed):
    """A self-contained HTML explorer: one drawing of ``draw`` per value of parameter ``name``.

    Returns an ``IPython.display.HTML`` whose slider steps through ``values`` without a kernel.
    At the default dpi an 8-inch-wide figure is 688 pixels, the width of the book's text column
    in a 1280-pixel window, so its text shows at the size it was drawn. ``fixed`` are passed to
    every call of ``draw``.
    """
    from IPython.display import HTML

    values = list(values)
    frames = []
    for value in values:
        fig = plt.figure(figsize=figsize, dpi=dpi)
        draw(fig, **{name: value}, **fixed)
        frames.append(frame_webp(fig))
        plt.close(fig)
    return HTML(explorer_html(frames, name, [str(v) for v in values]))
