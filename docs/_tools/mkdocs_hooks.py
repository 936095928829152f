"""MkDocs hooks: README sections in the site, and links to the examples.

- A line ``<!-- readme-section: TITLE -->`` in a page is replaced by the README's section with that
  heading (the heading line through the line before the next heading of the same or a higher
  level), so the site shows the README's tables and quick start without a copy that could drift.
  Links in it to ``docs/PAGE.md`` are made relative to the page. A missing section stops the build.
- A link to ``../examples/NAME.py`` (right on GitHub, where the pages sit in ``docs/``) becomes a
  link to the example's section of ``examples.md`` (its heading carries ``{#NAME}``), which shows
  the script's source.

Configured in ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

_README = Path(__file__).resolve().parents[2] / "README.md"
_MARKER = re.compile(r"^<!-- readme-section: (.+?) -->$", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
_DOCS_LINK = re.compile(r"\]\(docs/([^)#\s]+)(#[^)\s]*)?\)")
_EXAMPLE_LINK = re.compile(r"\]\((?:\.\./)+examples/([\w-]+)\.py\)")


def readme_section(readme: str, title: str) -> str:
    """The section of ``readme`` under the heading ``title`` (heading included)."""
    lines = readme.splitlines()
    in_code = False
    start, level = None, 0
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match is None:
            continue
        if start is not None and len(match.group(1)) <= level:
            return "\n".join(lines[start:i]).rstrip() + "\n"
        if start is None and match.group(2) == title:
            start, level = i, len(match.group(1))
    if start is None:
        raise ValueError(f"README.md has no section titled {title!r} (asked for by a docs page)")
    return "\n".join(lines[start:]).rstrip() + "\n"


def _relative(target: str, page_path: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(page_path) or ".")


def include_readme_sections(markdown: str, page_path: str, readme: str) -> str:
    """``markdown`` with each ``readme-section`` marker replaced by that README section."""

    def section(match: re.Match[str]) -> str:
        text = readme_section(readme, match.group(1))
        return _DOCS_LINK.sub(lambda m: f"]({_relative(m.group(1), page_path)}{m.group(2) or ''})", text)

    return _MARKER.sub(section, markdown)


def link_examples(markdown: str, page_path: str) -> str:
    """``markdown`` with links to ``../examples/NAME.py`` pointing at ``examples.md#NAME``."""
    return _EXAMPLE_LINK.sub(lambda m: f"]({_relative('examples.md', page_path)}#{m.group(1)})", markdown)


def on_page_markdown(markdown: str, *, page: Any, **kwargs: Any) -> str:
    path = page.file.src_uri
    return link_examples(include_readme_sections(markdown, path, _README.read_text()), path)
