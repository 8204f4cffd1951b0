"""README and docs/ hold together: links resolve, the README stays a path, every knob is documented.

Anchors follow GitHub's rule: the heading's text lowercased, punctuation other than hyphens and
underscores removed, spaces turned into hyphens, and a repeated heading suffixed -1, -2, ...
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
ENV_EXAMPLE = ROOT / ".env.example"
README_MAX_LINES = 300

PAGES = [README, *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
ENV_HEADING = re.compile(r"^# --- (.+?) -+$", re.M)
ENV_VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)=", re.M)


def prose(path: Path) -> str:
    """The file's Markdown with fenced code blocks removed: links and headings live outside."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a Markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for _, text in HEADING.findall(prose(path)):
        base = slug(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    """Link targets in a Markdown file that point inside this repository."""
    return [
        target
        for target in LINK.findall(prose(path))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def all_links() -> list[tuple[Path, str]]:
    return [(page, target) for page in PAGES for target in relative_links(page)]


def env_sections() -> dict[str, list[str]]:
    """.env.example's `# --- Heading` sections and the variables under each."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        heading = ENV_HEADING.match(line)
        if heading:
            current = heading.group(1)
            sections[current] = []
        elif (variable := ENV_VARIABLE.match(line)) and current is not None:
            sections[current].append(variable.group(1))
    return sections


def doc_title(env_heading: str) -> str:
    """The heading configuration.md gives an .env.example section: its title less any (aside)."""
    return re.sub(r"\s*\([^)]*\)", "", env_heading).strip()


def configuration_sections() -> dict[str, str]:
    """docs/configuration.md's `##` sections by heading text."""
    parts = re.split(r"^## +(.+?)\s*$", prose(CONFIGURATION), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_pages_have_links() -> None:
    """The link pattern still finds links (a broken pattern would make the next test vacuous)."""
    assert any(target.startswith("docs/") for target in relative_links(README))
    assert len(all_links()) > 20


@pytest.mark.parametrize(
    ("page", "target"),
    all_links(),
    ids=[f"{page.relative_to(ROOT)}->{target}" for page, target in all_links()],
)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    assert destination.exists(), f"{page.relative_to(ROOT)}: {target}: no such file"
    if anchor and destination.suffix == ".md":
        assert anchor in anchors(destination), (
            f"{page.relative_to(ROOT)}: {target}: no heading with that anchor in "
            f"{destination.relative_to(ROOT)}"
        )


def test_readme_is_a_path_not_a_manual() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md is {lines} lines; move a topic to docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in relative_links(README) if target
    }
    missing = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert not missing, f"README.md links no docs page named {missing}"


def test_every_env_example_variable_is_in_configuration() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    variables = ENV_VARIABLE.findall(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert len(variables) > 40
    missing = [name for name in variables if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not mention {missing}"


def test_every_env_example_heading_is_a_configuration_heading() -> None:
    sections = env_sections()
    assert len(sections) > 5
    headings = configuration_sections()
    missing = [title for title in map(doc_title, sections) if title not in headings]
    assert not missing, f"docs/configuration.md has no `## ` heading for {missing}"


def test_each_variable_is_documented_under_its_heading() -> None:
    """configuration.md groups the knobs as .env.example does."""
    headings = configuration_sections()
    misplaced = [
        f"{name} (under {title!r})"
        for heading, names in env_sections().items()
        if (title := doc_title(heading)) in headings
        for name in names
        if f"`{name}`" not in headings[title]
    ]
    assert not misplaced, f"docs/configuration.md documents elsewhere: {misplaced}"
