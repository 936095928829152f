"""A griffe extension that turns rankseg's docstrings into the Markdown mkdocstrings renders.

The docstrings are written to read well in ``help()`` and to run as doctests, so they use two
reStructuredText habits that Markdown does not know:

- doctest blocks (``>>>`` lines and their output) with no fence around them: Markdown would make
  ``>>>`` a block quote and ``[a]`` followed by ``[b]`` a reference link. Each run of non-blank
  lines that starts with ``>>>`` is fenced as ``pycon``;
- Sphinx roles (``:func:`name```, ``:class:`rankseg.RankSEG```): a role whose target is a public
  rankseg object becomes a cross-reference to its full path (so the strict build fails when the
  page that documents it is missing), any other role (private helpers, other libraries) becomes
  inline code; a ``::`` that opens a literal block becomes ``:``.

Configured in ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options: extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc|obj):`~?([^`]+)`")
_LITERAL_OPENER = re.compile(r"(\S)::$")


def fence_doctests(text: str) -> str:
    """``text`` with each doctest block (non-blank lines from a ``>>>`` line on) in a pycon fence."""
    lines = text.split("\n")
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (stripped.startswith(">>> ") or stripped == ">>>"):
            indent = line[: len(line) - len(stripped)]
            if (
                out
                and out[-1].strip()
                and out[-1].startswith(indent)
                and not out[-1][len(indent) :].startswith(" ")
            ):
                out.append("")  # ends the paragraph the block follows (not a section title above it)
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def literal_openers(text: str) -> str:
    """``text`` with the reStructuredText ``::`` that ends a paragraph before an indented block as ``:``."""
    return "\n".join(_LITERAL_OPENER.sub(r"\1:", line) for line in text.split("\n"))


def _lookup(root: griffe.Module, path: str) -> griffe.Object | griffe.Alias | None:
    if path == root.path:
        return root
    if not path.startswith(root.path + "."):
        return None
    try:
        return root[path[len(root.path) + 1 :]]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def resolve(root: griffe.Module, scope: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as Python would find it from ``scope`` (then absolute), or None."""
    head = target.split(".", 1)[0]
    obj: griffe.Object | None = scope
    while obj is not None:
        if head in obj.members:
            path = f"{obj.path}.{target}"
            return path if _lookup(root, path) is not None else None
        obj = obj.parent
    return target if _lookup(root, target) is not None else None


def _public(path: str) -> bool:
    return not any(part.startswith("_") and not part.startswith("__") for part in path.split("."))


def roles_to_references(root: griffe.Module, scope: griffe.Object, text: str) -> str:
    """Sphinx roles in ``text`` as cross-references (public rankseg objects) or inline code."""

    def replace(match: re.Match[str]) -> str:
        target = match.group(1)
        path = resolve(root, scope, target)
        if path is not None and _public(path):
            return f"[`{target}`][{path}]"
        if path is None and target.split(".", 1)[0] == root.name and _public(target):
            return f"[`{target}`][{target}]"  # a public rankseg name that does not exist: fails the build
        return f"`{target}`"

    return _ROLE.sub(replace, text)


class RanksegDocstrings(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._rewrite(pkg, pkg)

    def _rewrite(self, root: griffe.Module, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            scope = obj if obj.is_module or obj.is_class else (obj.parent or obj)
            text = fence_doctests(obj.docstring.value)
            obj.docstring.value = roles_to_references(root, scope, literal_openers(text))
        for member in obj.members.values():
            if not member.is_alias:
                self._rewrite(root, member)
