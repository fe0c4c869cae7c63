"""The README and its docs/ pages: every link resolves, every page is linked, a page per notebook, plain words.

The README is the first screen; per-operation detail lives in docs/, linked from a table in the README. A page
that nobody links, a link to a page or heading that is not there, or a README that lost its two commands is a
broken guide even when every test of the code passes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO

from runbook.orchestration.plan import FLEET_NOTEBOOK, NOTEBOOKS

README = REPO / "README.md"
DOCS = REPO / "docs"
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _prose(text: str) -> list[str]:
    """The page's lines without code: lines of fenced blocks are empty, inline code spans are left out."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else _CODE.sub("", line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, code marks and punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _FENCE.sub("", text), re.M)}


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """Relative links of the page at `path` whose file, or whose #heading in that file, is not there."""
    out = []
    for link in _LINK.findall(_FENCE.sub("", path.read_text())):
        if re.match(r"^[a-z]+:", link):  # http:, https:, mailto:
            continue
        file, _, anchor = link.partition("#")
        target = (path.parent / file).resolve() if file else path
        if not target.is_file():
            out.append(f"{path.relative_to(root)}: {link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
            out.append(f"{path.relative_to(root)}: {link}: no such heading in {target.name}")
    return out


def linked_pages(path: Path) -> set[Path]:
    """The docs/ pages that the page at `path` links to."""
    found = set()
    for link in _LINK.findall(_FENCE.sub("", path.read_text())):
        file = link.partition("#")[0]
        if file.endswith(".md") and not re.match(r"^[a-z]+:", file):
            found.add((path.parent / file).resolve())
    return {p for p in found if p.parent == DOCS.resolve()}


def test_every_link_of_the_readme_and_the_docs_resolves() -> None:
    assert _pages(), "docs/ holds the per-operation pages"
    problems = [p for path in [README, *_pages()] for p in broken_links(path)]
    assert not problems


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = linked_pages(README)
    assert {p.resolve() for p in _pages()} - linked == set()
    assert linked, "the README links its docs/ pages"


def test_a_broken_link_and_an_unlinked_page_are_caught(tmp_path: Path) -> None:
    """The checks above trip on a missing page, a missing heading and a page nobody links."""
    (tmp_path / "other.md").write_text("# Other\n\n## Exit codes\n")
    page = tmp_path / "page.md"
    page.write_text("See [gone](gone.md), [codes](other.md#exit-codes), [nope](other.md#no-such), "
                    "[web](https://example.com/x.md).\n\n```sh\nrunbook [x](inside-code.md)\n```\n")
    assert broken_links(page, tmp_path) == ["page.md: gone.md: no such file",
                                            "page.md: other.md#no-such: no such heading in other.md"]
    assert linked_pages(page) == set()  # other.md is not in docs/
    assert DOCS.resolve() / "no-such-page.md" not in linked_pages(README)


@pytest.mark.parametrize("heading, anchor", [
    ("Exit codes", "exit-codes"),
    ("Remote archives: S3 and other fsspec URLs", "remote-archives-s3-and-other-fsspec-urls"),
    ("Data (`--with-data`)", "data---with-data"),
    ("`inspect`: the picture, read-only", "inspect-the-picture-read-only"),
])
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_every_notebook_has_its_page() -> None:
    pages = {p.stem for p in _pages()}
    assert set(NOTEBOOKS) - pages == set()  # inspect.md, enable-aof.md, ... one per `runbook run` name
    assert "fleet" in pages and FLEET_NOTEBOOK in (DOCS / "fleet.md").read_text()


def test_the_first_screen_says_what_it_is_and_the_two_commands() -> None:
    first = " ".join(" ".join(README.read_text().splitlines()[:40]).split())
    assert "make demo" in first and "make test" in first
    assert re.search(r"AOF (is )?on at runtime but off in `?redis\.conf", first)  # the problem, in plain words
    assert "sandbox" in first  # what `make demo` touches: only a throwaway sandbox


def test_the_readme_stays_short() -> None:
    assert len(README.read_text().splitlines()) <= 170


def test_no_page_a_user_reads_speaks_of_the_seed() -> None:
    """Users do not know the project's brief ("the seed"): say what it means. Code (`seed_sandbox`) may."""
    said = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for path in [README, *_pages()]
            for n, line in enumerate(_prose(path.read_text()), start=1)
            if re.search(r"\bseed", line, re.I)]
    assert not said


def test_the_seed_check_sees_prose_and_spares_code() -> None:
    assert any(re.search(r"\bseed", line, re.I) for line in _prose("fixes the seed's drift"))
    code = "`runbook/sandbox/seed.py` and\n```\nseed_sandbox()\n```\n"
    assert not any(re.search(r"\bseed", line, re.I) for line in _prose(code))
