"""The links the book makes to its repository: the repository button and the Colab launch buttons.

They come from ``repository`` and ``launch_buttons`` in _config.yml, put together by the theme
(sphinx-book-theme) at build time, so they are checked twice: the configuration itself, and the
links as they stand in the built HTML of every page (a browser normalizes a URL such as
``.../blob/main/./book/x.ipynb`` before a script can read it, so the raw ``href`` is read here).
A well-formed link is an https URL with no empty, ``.`` or ``..`` path segment; a Colab link opens
the page's own notebook on the configured repository and branch, and that notebook exists.
"""

from __future__ import annotations

import html.parser
import pathlib
import posixpath
import re
import subprocess
import sys
import urllib.parse

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPOSITORY = CONFIG["repository"]
COLAB = CONFIG.get("launch_buttons", {}).get("colab_url", "").rstrip("/")
NAME = r"[A-Za-z0-9_.-]+"  # a GitHub owner, repository or branch name


def problems_of_url(url: str) -> list[str]:
    """What is wrong with ``url`` as a link: not https, no host, or an odd path segment."""
    parts = urllib.parse.urlsplit(url)
    found = []
    if parts.scheme != "https" or not parts.netloc:
        found.append("not an https URL with a host")
    if any(c.isspace() for c in url):
        found.append("contains white space")
    segments = parts.path.split("/")[1:]
    if parts.path.endswith("/"):
        segments = segments[:-1]  # one trailing slash is a folder, not an empty segment
    if any(s in ("", ".", "..") for s in segments):
        found.append(f"path {parts.path!r} has an empty, '.' or '..' segment")
    return found


def test_problems_of_url_finds_what_it_should():
    assert problems_of_url("https://github.com/a/b/blob/main/book/x.ipynb") == []
    assert problems_of_url("https://example.org/") == []
    assert problems_of_url("https://github.com/a/b/blob/main/./book/x.ipynb")
    assert problems_of_url("https://github.com/a/b//book")
    assert problems_of_url("https://github.com/a/b/../c")
    assert problems_of_url("http://github.com/a/b")
    assert problems_of_url("github.com/a/b")


def test_the_repository_url_is_a_plain_github_repository():
    url = REPOSITORY["url"]
    assert re.fullmatch(rf"https://github\.com/{NAME}/{NAME}", url), (
        f"repository.url should be https://github.com/OWNER/REPO (no trailing slash, no .git): {url!r}"
    )
    assert not url.endswith(".git")
    assert re.fullmatch(NAME, REPOSITORY["branch"]), REPOSITORY["branch"]


def test_path_to_book_is_a_clean_relative_folder():
    path = REPOSITORY.get("path_to_book", "")
    assert path == "" or (posixpath.normpath(path) == path and path not in (".", "..") and not path.startswith(("/", "../"))), (
        f"path_to_book {path!r}: use '' for the repository root, else a folder like 'docs' (no './', no trailing '/')"
    )
    assert (ROOT / path / "_toc.yml").is_file()


class Links(html.parser.HTMLParser):
    """Every ``<a href>`` of a page, as written."""

    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


@pytest.fixture(scope="module")
def pages() -> list[pathlib.Path]:
    """Every page of the built book, built first with the README's command (incremental).

    A build with warnings still writes its pages: whether it is clean is tests/test_site.py's
    concern; the links are this file's.
    """
    jupyter_book = pathlib.Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jupyter_book), "build", ".", "-W", "-n", "--keep-going"], cwd=ROOT, capture_output=True)
    found = sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    assert found, f"no pages in {HTML}: the book did not build"
    return found


def links_of(page: pathlib.Path) -> list[str]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.hrefs


def test_every_link_to_the_repository_or_colab_is_well_formed(pages):
    repo = REPOSITORY["url"]
    bad, seen = [], 0
    for page in pages:
        for href in links_of(page):
            if href.startswith((repo, COLAB or "\0")):
                seen += 1
                bad += [f"{page.relative_to(HTML)}: {href}: {p}" for p in problems_of_url(href)]
    assert seen, "no link to the repository or to Colab in the whole book"
    assert not bad, "\n".join(bad)


def test_each_notebook_page_opens_its_own_notebook_in_colab(pages):
    owner_repo = urllib.parse.urlsplit(REPOSITORY["url"]).path.strip("/")
    prefix = f"{COLAB}/github/{owner_repo}/blob/{REPOSITORY['branch']}/"
    book = ROOT / REPOSITORY.get("path_to_book", "")
    checked, bad = 0, []
    for page in pages:
        colab = [h for h in links_of(page) if COLAB and h.startswith(COLAB + "/")]
        notebook = book / page.relative_to(HTML).with_suffix(".ipynb")
        if not notebook.is_file():
            bad += [f"{page.relative_to(HTML)}: a Colab link on a page without a notebook: {colab}"] if colab else []
            continue
        expected = prefix + notebook.relative_to(ROOT).as_posix()
        if colab != [expected]:
            bad.append(f"{page.relative_to(HTML)}: Colab link(s) {colab}, expected [{expected}]")
        checked += 1
    assert checked, "no page made from a notebook"
    assert not bad, "\n".join(bad)


def test_the_repository_button_is_the_repository_url(pages):
    for page in pages:
        hrefs = links_of(page)
        if any(h.startswith(REPOSITORY["url"]) for h in hrefs):
            assert REPOSITORY["url"] in hrefs, f"{page.relative_to(HTML)}: no link to exactly {REPOSITORY['url']}"
