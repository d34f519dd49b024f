"""The rendered book, checked as a reader sees it: every page of _build/html in headless Chromium.

The book is built first (the README's build command; incremental, so quick when it is fresh),
served from a local HTTP server and opened page by page, from _toc.yml, in Debian's ``chromium``
driven by Playwright. Every request to another host is refused and recorded as *external*:
CDN scripts for live widgets, the icon font of matplotlib's animations. A page must read well
without them, so on every page:

* it loads, and no script of the book's own (its files and inline scripts) reports an error;
* every image is present and decoded (``naturalWidth > 0``), and every ``<figure>`` holds one;
* every link into the book resolves: the file exists, and so does the ``#anchor`` in it;
* every equation is typeset by the MathJax bundled into the book (no CDN);
* nothing is wider than the text column at a 1280-pixel window: no figure, table, output, code
  or equation reaches past its right edge or needs a scroll bar (folded cells are unfolded);
* every kernel-free explorer responds to its controls (see ``EXPLORERS``); a page with live
  widgets has at least one, because a widget never runs in the static page;
* a chapter made from a notebook has a Colab button that opens that notebook on the repository
  of _config.yml.

A full-page screenshot of each page goes to _build/screenshots/, with one of each explorer at the
last position of each control, and report.json listing what each page loaded from outside and
what was checked. Chromium is found as ``chromium`` on the
PATH or at ``$CHROMIUM``; the README's set-up command installs it.
"""

from __future__ import annotations

import functools
import html.parser
import json
import os
import pathlib
import posixpath
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())

# Chromium's switches: headless, a fresh profile (Playwright's user_data_dir), and nothing that
# reaches the network on its own (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# A kernel-free explorer is an element with the class ``kernel-free-explorer`` (wrap any
# precomputed explorer in one, e.g. a ``tab-set`` with ``:class: kernel-free-explorer``), or a
# matplotlib ``to_jshtml`` animation, found by its slider. Its controls are its range sliders,
# its <select>s and its tab sets (an animation's buttons are not: Pause changes nothing). Each
# position of a control must show other content than the one before (visible images, canvases,
# SVGs and text), and the first position, when the control comes back to it, the same again.
EXPLORERS = ".kernel-free-explorer, .animation:has(input.anim-slider)"
TAB_SETS = ".sd-tab-set, [role=tablist]"  # sphinx-design's tab-set, or ARIA tabs
TABS = ":scope > label.sd-tab-label, :scope > [role=tab]"
MAX_POSITIONS = 50  # a slider with more positions is checked at its first 50 steps

# Where sphinx-mathjax-offline (an extension in _config.yml) puts MathJax 3 in the build.
MATHJAX = "_static/mathjax/tex-chtml.js"

# Errors that every page of a Jupyter Book 1.0.4 shows in a fresh browser, from its toolchain,
# harmless to a reader; matched exactly, listed in report.json, not failures.
KNOWN_TOOLCHAIN_ERRORS = {
    # Sphinx 7.4 writes an extension's inline (body-only) script twice; sphinx-thebe's second
    # `const` declaration then throws, after the first has defined the same values.
    "uncaught error: Identifier 'THEBE_JS_URL' has already been declared",
    # pydata-sphinx-theme with no stored colour mode (a first visit) logs this and uses "auto".
    "console error: Got invalid theme mode: . Resetting to auto.",
}

WIDGET_VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]'


def toc_pages() -> list[str]:
    """Every page of _toc.yml in reading order ("book/index", ...), then Sphinx's own pages."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def files(entries):
        for entry in entries or []:
            if "file" in entry:
                yield entry["file"]
            for key in ("parts", "chapters", "sections"):
                yield from files(entry.get(key))

    pages = [toc["root"], *files([toc])]
    return [posixpath.splitext(p)[0] for p in pages] + ["genindex", "search"]


# ---------------------------------------------------------------------------------------------
# Fixtures: the built book, a local server for it, one Chromium for the session.


@pytest.fixture(scope="session")
def built_book() -> pathlib.Path:
    """_build/html, brought up to date by the README's build command (incremental)."""
    jupyter_book = pathlib.Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", ".", "-W", "-n", "--keep-going"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"the book does not build cleanly ({' '.join(cmd[1:])}):\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    return HTML


@pytest.fixture(scope="session")
def site(built_book):
    """The base URL of a local HTTP server for _build/html (ends with '/')."""

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(built_book), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "Chromium not found: the browser check needs Debian's `chromium` "
            "(apt-get install -y chromium, part of the README's set-up command), "
            "or the path of a Chromium or Chrome binary in $CHROMIUM."
        )
    return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """One headless Chromium with a fresh profile, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium_path(),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            service_workers="block",
        )
        yield context
        context.close()


@pytest.fixture(scope="session")
def report():
    """What each page loaded from outside and what was checked; saved beside the screenshots.

    The screenshots of an earlier run are removed first, so the folder shows this run only.
    """
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    pages: dict[str, dict] = {}
    yield pages
    (SHOTS / "report.json").write_text(json.dumps(pages, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------
# Opening a page the way a reader does, with the network cut off.


class Visit:
    """One page open in the browser: what failed, split into the book's own and external."""

    def __init__(self, browser, site: str, url: str):
        self.site = site
        self.own: list[str] = []  # failures of the book itself
        self.known: list[str] = []  # KNOWN_TOOLCHAIN_ERRORS seen
        self.external: list[str] = []  # requests to other hosts, refused
        self.page = page = browser.new_page()
        page.route("**/*", self._route)
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        page.on("requestfailed", self._request_failed)
        page.on("response", self._response)
        self.response = page.goto(url, wait_until="load", timeout=30_000)

    def is_local(self, url: str) -> bool:
        return url.startswith(self.site) or url.startswith(("data:", "blob:", "about:"))

    def _route(self, route):
        url = route.request.url
        if self.is_local(url):
            route.continue_()
        else:
            self.external.append(url)
            route.abort("internetdisconnected")

    def _console(self, msg):
        if msg.type != "error":
            return
        where = msg.location.get("url", "") if msg.location else ""
        if where and not self.is_local(where):
            return  # an external resource that could not load: recorded by _route
        self._fault(f"console error: {msg.text}", where or "inline")

    def _page_error(self, error):
        frames = re.findall(r"(?:https?|blob):[^\s)]+", error.stack or "")
        if frames and not self.is_local(frames[0]):
            self.external.append(f"script error in {frames[0]}: {error.message}")
        else:
            self._fault(f"uncaught error: {error.message}", error.stack)

    def _fault(self, message: str, where: str):
        if message in KNOWN_TOOLCHAIN_ERRORS:
            self.known.append(message)
        else:
            self.own.append(f"{message} ({where})")

    def _request_failed(self, request):
        if self.is_local(request.url) and not request.url.startswith("data:"):
            self.own.append(f"failed to load {request.url}: {request.failure}")

    def _response(self, response):
        if self.is_local(response.url) and response.status >= 400:
            self.own.append(f"HTTP {response.status} for {response.url}")

    def close(self):
        self.page.close()


@pytest.fixture
def visit(browser, site):
    visits = []

    def open_page(path: str) -> Visit:
        visits.append(Visit(browser, site, site + path))
        return visits[-1]

    yield open_page
    for v in visits:
        v.close()


# ---------------------------------------------------------------------------------------------
# What a page must show.

IMAGES_JS = """async () => {
    for (const img of document.images) img.loading = "eager";
    await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
    return {
        images: [...document.images].map(img => ({
            src: (img.currentSrc || img.getAttribute("src") || "").slice(0, 120),
            ok: img.complete && img.naturalWidth > 0,
        })),
        emptyFigures: [...document.querySelectorAll("figure")]
            .filter(f => !f.querySelector("img, svg, canvas, video, object, iframe"))
            .map(f => f.id || f.textContent.trim().slice(0, 80)),
    };
}"""

LINKS_JS = """() => ({
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
    ids: [...document.querySelectorAll("[id], a[name]")].map(e => e.id || e.getAttribute("name")),
})"""

MATH_JS = """async () => {
    const math = [...document.querySelectorAll(".math")];
    const script = document.querySelector("script[src*='mathjax' i]");
    if (math.length === 0) return {count: 0};
    if (!(window.MathJax && MathJax.startup && MathJax.startup.promise))
        return {count: math.length, loaded: false, script: script && script.src};
    await MathJax.startup.promise;
    return {
        count: math.length,
        loaded: true,
        script: script && script.src,
        unrendered: math.filter(m => !m.querySelector("mjx-container")).map(m => m.textContent.slice(0, 80)),
        errors: [...document.querySelectorAll("mjx-merror")].map(e => e.textContent),
    };
}"""

# What is wider than the text column. Every folded block is opened first (the folded code of a
# cell is read too, once unfolded). A block is too wide if it reaches past the right edge of the
# column's content box, or if its content is wider than the block itself (it scrolls or clips).
WIDE_JS = """() => {
    for (const d of document.querySelectorAll("article details")) d.open = true;
    const column = document.querySelector("article.bd-article") || document.querySelector("main");
    const style = getComputedStyle(column);
    const edge = column.getBoundingClientRect().right - parseFloat(style.paddingRight);
    const blocks = "figure, img, table, pre, .cell_output, .output, .animation, .pst-scrollable-table-container, "
        + "div.math, mjx-container[display='true'], .highlight";
    return [...column.querySelectorAll(blocks)].filter(e => e.checkVisibility()).flatMap(e => {
        const right = e.getBoundingClientRect().right;
        const scrolls = e.scrollWidth > e.clientWidth + 1;
        if (!scrolls && right <= edge + 1) return [];
        const what = e.tagName.toLowerCase() + (e.className ? "." + String(e.className).split(" ")[0] : "");
        const text = (e.innerText || e.getAttribute("src") || "").trim().split("\\n")[0].slice(0, 60);
        return [`${what} "${text}": content ${e.scrollWidth} px in ${e.clientWidth} px, right edge `
                + `${Math.round(right)} px, the column's ${Math.round(edge)} px`];
    });
}"""

# What an explorer shows: its visible images (src), canvases, inline SVGs and text.
SHOWN_JS = """async (root) => {
    const shown = [...root.querySelectorAll("img, canvas, svg")].filter(e => e.checkVisibility());
    const imgs = shown.filter(e => e.tagName === "IMG");
    await Promise.all(imgs.map(img => img.decode().catch(() => null)));
    return {
        content: JSON.stringify([
            imgs.map(img => img.currentSrc || img.src),
            shown.filter(e => e.tagName === "CANVAS").map(c => c.toDataURL()),
            shown.filter(e => e.tagName.toLowerCase() === "svg" && !e.closest("button")).map(s => s.outerHTML),
            root.innerText,
        ]),
        broken: imgs.filter(img => !(img.complete && img.naturalWidth > 0)).length,
    };
}"""


@functools.lru_cache(maxsize=None)
def anchors_in(file: pathlib.Path) -> frozenset[str]:
    """The ids (and <a name>s) of an HTML file, read from disk."""

    class Ids(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids: set[str] = set()

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.ids.update(v for k, v in attrs.items() if v and (k == "id" or (tag == "a" and k == "name")))

    parser = Ids()
    parser.feed(file.read_text(errors="replace"))
    return frozenset(parser.ids)


def broken_links(visit: Visit) -> tuple[list[str], int]:
    """Links into the book whose file or #anchor does not exist, and how many links were checked."""
    found = visit.page.evaluate(LINKS_JS)
    here = urllib.parse.urlsplit(visit.page.url).path
    broken, checked = [], 0
    for link in dict.fromkeys(found["links"]):
        if not link.startswith(visit.site):
            continue
        checked += 1
        parts = urllib.parse.urlsplit(link)
        path = urllib.parse.unquote(parts.path)
        file = HTML / path.lstrip("/")
        if path.endswith("/"):
            file = file / "index.html"
        if not file.is_file():
            broken.append(f"{link}: no file {file.relative_to(HTML)}")
            continue
        anchor = urllib.parse.unquote(parts.fragment)
        if anchor and file.suffix == ".html":
            ids = set(found["ids"]) if parts.path == here else anchors_in(file)
            if anchor not in ids:
                broken.append(f"{link}: no #{anchor} in {file.relative_to(HTML)}")
    return broken, checked


def colab_problems(visit: Visit, page: str) -> list[str]:
    """A notebook page has a Colab button opening that notebook on _config.yml's repository."""
    colab = CONFIG.get("launch_buttons", {}).get("colab_url", "").rstrip("/")
    notebook = (ROOT / CONFIG["repository"].get("path_to_book", "") / f"{page}.ipynb").resolve()
    hrefs = visit.page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    buttons = [h for h in hrefs if colab and h.startswith(colab + "/")]
    if not notebook.is_file():
        return [f"a Colab button on a page without a notebook: {buttons}"] if buttons else []
    repo = urllib.parse.urlsplit(CONFIG["repository"]["url"]).path.strip("/")
    expected = f"{colab}/github/{repo}/blob/{CONFIG['repository']['branch']}/{notebook.relative_to(ROOT).as_posix()}"
    if buttons != [expected]:
        return [f"Colab button(s) {buttons}, expected exactly [{expected}]"]
    return []


def control_moves(root) -> list[tuple[str, list]]:
    """Each control of an explorer as (name, moves): moves[i]() brings it to its i-th position."""
    controls = []
    for i, slider in enumerate(root.locator("input[type=range]").all()):
        n = slider.evaluate("e => Math.round((e.max - e.min) / (Number(e.step) || 1)) + 1")
        first = functools.partial(slider.press, "Home")
        step = functools.partial(slider.press, "ArrowRight")
        controls.append((f"slider {i + 1}", [first] + [step] * (min(n, MAX_POSITIONS) - 1)))
    for i, select in enumerate(root.locator("select").all()):
        values = select.evaluate("e => [...e.options].map(o => o.value)")
        controls.append((f"select {i + 1}", [functools.partial(select.select_option, v) for v in values]))
    tab_sets = [root] if root.evaluate("(e, sel) => e.matches(sel)", TAB_SETS) else root.locator(TAB_SETS).all()
    for i, tab_set in enumerate(tab_sets):
        tabs = tab_set.locator(TABS).all()
        controls.append((f"tab set {i + 1}", [tab.click for tab in tabs]))
    return controls


def explorer_problems(visit: Visit, shots: str) -> tuple[list[str], list[dict]]:
    """Move every control of every kernel-free explorer; the content shown must follow it.

    Each control's last position is saved as ``{shots}-explorer-N-CONTROL.png`` to be looked at.
    """
    page = visit.page
    problems, explorers = [], []
    # An explorer inside another (an animation in a marked wrapper) is checked with the outer one.
    outer = page.evaluate("sel => [...document.querySelectorAll(sel)].map(e => !e.parentElement.closest(sel))", EXPLORERS)
    roots = [root for root, is_outer in zip(page.locator(EXPLORERS).all(), outer) if is_outer]
    for n, root in enumerate(roots, 1):
        controls = control_moves(root)
        if not controls:
            problems.append(f"explorer {n}: no control (slider, select or tab set) to move")
        positions = []
        for name, moves in controls:
            seen = []
            for move in moves:
                move()
                seen.append(root.evaluate(SHOWN_JS))
            root.screenshot(path=f"{shots}-explorer-{n}-{name.replace(' ', '-')}.png")
            moves[0]()
            back = root.evaluate(SHOWN_JS)
            shown = [s["content"] for s in seen]
            positions.append(len(shown))
            where = f"explorer {n}, {name}"
            if len(shown) < 2:
                problems.append(f"{where}: a single position")
            if any(a == b for a, b in zip(shown, shown[1:])) or len(set(shown)) < len(shown) and not name.startswith("slider"):
                problems.append(f"{where}: moved, but the content shown did not change")
            if back["content"] != shown[0]:
                problems.append(f"{where}: back at its first position, it does not show what it showed there")
            if any(s["broken"] for s in seen + [back]):
                problems.append(f"{where}: shows an image that does not decode")
        explorers.append({"controls": [name for name, _ in controls], "positions": positions})
    return problems, explorers


def shot_name(page: str) -> str:
    return page.replace("/", "-")


# ---------------------------------------------------------------------------------------------
# The tests.


@pytest.mark.parametrize("page", toc_pages())
def test_page_reads_well_offline(page, visit, report):
    v = visit(f"{page}.html")
    problems: list[str] = []
    if v.response is None or v.response.status != 200:
        problems.append(f"the page did not load: {v.response and v.response.status}")
    if not any(title.strip() for title in v.page.locator("h1").all_inner_texts()):
        problems.append("the page has no title (no <h1> with text)")

    v.page.evaluate("() => document.fonts.ready.then(() => null)")
    math = v.page.evaluate(MATH_JS)
    images = v.page.evaluate(IMAGES_JS)
    v.page.screenshot(path=str(SHOTS / f"{shot_name(page)}.png"), full_page=True)

    if math["count"]:
        if not math["loaded"]:
            problems.append(f"MathJax did not load ({math.get('script')}): {math['count']} equations not typeset")
        else:
            if not (math["script"] or "").startswith(v.site):
                problems.append(f"MathJax comes from outside the book: {math['script']}")
            problems += [f"equation not typeset: {m}" for m in math["unrendered"]]
            problems += [f"equation error: {m}" for m in math["errors"]]

    problems += [
        f"image not shown: {img['src']}" + ("" if v.is_local(img["src"]) else " (it needs the network)")
        for img in images["images"]
        if not img["ok"]
    ]
    problems += [f"figure without an image: {f}" for f in images["emptyFigures"]]

    wide = v.page.evaluate(WIDE_JS)
    problems += [f"wider than the text column: {w}" for w in wide]

    links, checked_links = broken_links(v)
    problems += [f"broken link: {b}" for b in links]
    problems += colab_problems(v, page)

    explorer_faults, explorers = explorer_problems(v, str(SHOTS / shot_name(page)))
    problems += explorer_faults
    widgets = v.page.locator(WIDGET_VIEW).count()
    if widgets and not explorers:
        problems.append(f"{widgets} live widget(s) but no kernel-free explorer: the static page shows none of them")

    problems = v.own + problems  # script errors last seen after the explorers were moved
    report[page] = {
        "external": sorted(set(v.external)),
        "known_toolchain_errors": sorted(set(v.known)),
        "images": len(images["images"]),
        "links_checked": checked_links,
        "equations": math["count"],
        "wider_than_the_column": len(wide),
        "explorers": explorers,
        "live_widgets": widgets,
        "problems": problems,
    }
    assert not problems, f"{page}.html:\n  " + "\n  ".join(problems)


def test_site_root_opens_the_first_page(visit):
    """The address of the site itself (index.html) leads to the book's first page."""
    first = toc_pages()[0]
    v = visit("index.html")
    v.page.wait_for_url(f"**/{first}.html", timeout=10_000)
    assert not v.own


def test_bundled_mathjax_typesets_offline(browser, site, built_book):
    """The MathJax the book points to is a file of the book, and it typesets with no network."""
    assert (built_book / MATHJAX).is_file(), f"{MATHJAX} is missing from the build"
    for page in toc_pages():  # every page that loads MathJax loads this copy
        scripts = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', (built_book / f"{page}.html").read_text(), re.I)
        assert all(urllib.parse.urljoin(f"{page}.html", s).split("?")[0] == MATHJAX for s in scripts), (page, scripts)
    page = browser.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site) else route.abort())
    probe = f'<p class="math">\\(S_{{ij}} = q_i \\cdot k_j\\)</p><script src="{MATHJAX}"></script>'
    page.route(site + "probe.html", lambda route: route.fulfill(content_type="text/html", body=probe))
    page.goto(site + "probe.html")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise.then(() => null)")
    assert page.locator("p.math mjx-container").count() == 1
    assert page.locator("mjx-merror").count() == 0
    page.close()
