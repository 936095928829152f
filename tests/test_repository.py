"""Repository hygiene that CI should enforce: lint, and the README commands CI runs."""

import ast
import os
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
    reason="ruff is not installed",
)
def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_reads_both_commands_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in ("demo", "tests"):
        assert f"<!-- readme-command: {name} -->" in readme
    assert "-c constraints.txt" in readme
    pins = (ROOT / "constraints.txt").read_text().split()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_importing_rankseg_does_not_import_transformers():
    code = (
        "import sys, rankseg, rankseg.functional, rankseg.integration; print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _python_blocks(markdown: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in markdown.splitlines():
        if line.strip() == "```python":
            inside, current = True, []
        elif line.strip() == "```" and inside:
            inside = False
            blocks.append("\n".join(current))
        elif inside:
            current.append(line)
    return blocks


def test_readme_python_examples_run():
    """Every self-contained Python block of the README runs as shown (those that need a real
    checkpoint or the user's own outputs are marked with a comment and skipped)."""
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "the README has Python examples"
    namespace: dict = {}
    for block in blocks:
        if "# needs:" in block:
            continue
        exec(compile(block, "README.md", "exec"), namespace)


def test_quickstart_example_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "RankSEG  mDice" in result.stdout and "argmax   mDice" in result.stdout


# ------------------------------------------------------------------ library and application apart

SRC = ROOT / "src" / "rankseg"
# Byte-level codecs a hand-written image reader or writer is made of; images go through Pillow.
CODEC_MODULES = {"zlib", "struct", "binascii"}
IMAGE_SIGNATURES = (b"\x89PNG", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"JFIF", b"GIF87a", b"GIF89a")
GLYPH_ROWS = re.compile(r"^[.#]{3,}(\|[.#]{3,}){4,}$")  # a bitmap font's character, row by row
GLYPH_NAMES = re.compile(r"glyph|font|draw_text|text_width", re.IGNORECASE)


def _modules(package: Path = SRC, name: str = "rankseg") -> list[str]:
    """Dotted names of every module under ``package`` (from the file tree; nothing is imported)."""
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        names.append(".".join((name, *parts[:-1])) if parts[-1] == "__init__" else ".".join((name, *parts)))
    return names


def test_no_module_under_src_encodes_images_or_draws_glyphs():
    """Image files go through Pillow and figures through matplotlib (issue 13): no PNG chunks written
    with zlib and struct, no file signatures, no bitmap font or text drawing of our own."""
    problems = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            imported = []
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module]
            for module in imported:
                if module.split(".")[0] in CODEC_MODULES:
                    problems.append(f"{where}:{node.lineno}: imports {module}")
            if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
                found = [s for s in IMAGE_SIGNATURES if s in node.value]
                if found:
                    problems.append(f"{where}:{node.lineno}: image file bytes {found[0]!r}")
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and GLYPH_ROWS.match(node.value)
            ):
                problems.append(f"{where}:{node.lineno}: a bitmap glyph {node.value!r}")
            defined = []
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined = [node.name]
            elif isinstance(node, ast.Assign):
                defined = [t.id for t in node.targets if isinstance(t, ast.Name)]
            problems += [f"{where}:{node.lineno}: defines {n}" for n in defined if GLYPH_NAMES.search(n)]
    assert not problems, "\n".join(problems)


# Integrations whose host library itself needs Pillow / matplotlib / tqdm (MONAI and nnU-Net import
# them); they are checked for rankseg.cli imports without blocking the cli extra.
HOST_NEEDS_CLI_LIBRARIES = ("rankseg.integration.monai", "rankseg.integration.nnunet")


def test_the_core_imports_nothing_from_the_command_line():
    """Every module of the library imports without the 'cli' extra (Pillow, matplotlib, tqdm made
    unimportable; integrations whose host library needs them aside), and none of them pulls in
    rankseg.cli."""
    core = [m for m in _modules() if not m.startswith(("rankseg.cli", "rankseg.__main__"))]
    hosted = [m for m in core if m in HOST_NEEDS_CLI_LIBRARIES]
    core = [m for m in core if m not in HOST_NEEDS_CLI_LIBRARIES]
    assert {"rankseg.functional", "rankseg.metrics", "rankseg.data", "rankseg.solvers.rma"} <= set(core)
    code = f"""
import importlib, sys

class BlockTheCliExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("PIL", "matplotlib", "tqdm"):
            raise ImportError(f"{{name}} is blocked: the library must not need it")

blocker = BlockTheCliExtra()
sys.meta_path.insert(0, blocker)
for name in {core!r}:
    importlib.import_module(name)
sys.meta_path.remove(blocker)
for name in {hosted!r}:
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m.startswith("rankseg.cli")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -------------------------------------------------------------------------- the documentation site

DOCS = ROOT / "docs"


def _public_modules() -> list[str]:
    """Modules whose names have no leading underscore, without the application (``rankseg.cli``)."""
    return [
        m
        for m in _modules()
        if not any(part.startswith("_") for part in m.split(".")) and not m.startswith("rankseg.cli")
    ]


def _module_path(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = SRC / relative / "__init__.py"
    return package if package.exists() else (SRC / relative).with_suffix(".py")


def _all_names(module: str) -> list[str]:
    """The module's ``__all__``, read from its source (nothing is imported)."""
    for node in ast.parse(_module_path(module).read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def _public_names() -> list[str]:
    """Every public module, and ``module.name`` for every name it exports; a module whose names are
    all modules (``rankseg.integration``) is documented by their pages instead of its own."""
    modules = _public_modules()
    names = []
    for module in modules:
        exported = [f"{module}.{name}" for name in _all_names(module)]
        own = [name for name in exported if name not in modules]
        if exported and not own:
            continue
        names += [module, *own]
    return names


def test_every_public_name_has_an_api_page_in_the_navigation():
    """Each public module (its __all__) is rendered by a ``::: module`` entry of a docs/api page that
    mkdocs.yml lists; so a new module needs its page (DEVELOPERS.md, "Documentation")."""
    modules = _public_modules()
    assert {"rankseg", "rankseg.functional", "rankseg.metrics", "rankseg.data"} <= set(modules)
    assert {"rankseg.integration.transformers", "rankseg.integration.sam"} <= set(modules)
    assert "RankSEG" in _all_names("rankseg")
    entries = {}  # module -> page
    for page in sorted((DOCS / "api").glob("*.md")):
        for line in page.read_text().splitlines():
            if line.startswith("::: "):
                entries[line[4:].strip()] = page.relative_to(DOCS).as_posix()
    nav = set(
        re.findall(r"^\s*- (?:[^:\n]+: )?(api/[\w.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    )
    missing = []
    for module in modules:
        if module in entries:
            continue
        if all(f"{module}.{name}" in entries or f"{module}.{name}" in modules for name in _all_names(module)):
            continue  # e.g. rankseg.integration: each of its names is a module with its own page
        missing.append(f"{module}: no '::: {module}' line in docs/api/*.md")
    missing += [f"{page} (for {module}) is not in the nav of mkdocs.yml" for module, page in entries.items()
                if page not in nav]  # fmt: skip
    assert not missing, "\n".join(missing)


def test_every_example_script_has_a_section_that_shows_its_source():
    page = (DOCS / "examples.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert scripts
    for name in scripts:
        stem = name.removesuffix(".py")
        assert f"{{#{stem}}}" in page and f'--8<-- "examples/{name}"' in page, name


def test_docs_build_strictly_and_list_every_public_name(tmp_path):
    """The strict build CI runs (.ci/run), and every public name in the site's objects inventory."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    body = (site / "objects.inv").read_bytes().split(b"zlib.\n", 1)[1]  # after the 4 header lines
    inventory = {line.split(" ", 1)[0] for line in zlib.decompress(body).decode().splitlines()}
    missing = [name for name in _public_names() if name not in inventory]
    assert not missing, f"public names without a page entry: {missing}"
    assert "rankseg.RankSEG" in inventory and "rankseg.metrics.dice_score" in inventory
    assert (site / "index.html").exists() and (site / "api" / "functional.html").exists()


def _docs_tool(name: str):
    sys.path.insert(0, str(DOCS / "_tools"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(DOCS / "_tools"))


def test_readme_sections_are_included_with_their_links_made_relative():
    hooks = _docs_tool("mkdocs_hooks")
    readme = (
        "# T\n\n## Speed\n\nSee [a](docs/algorithms.md#rma).\n\n```\n## not a heading\n```\n"
        "### Sub\n\nx\n## Next\n"
    )
    section = hooks.readme_section(readme, "Speed")
    assert section.startswith("## Speed\n") and "### Sub" in section and "## Next" not in section
    page = hooks.include_readme_sections("intro\n<!-- readme-section: Speed -->\n", "api/index.md", readme)
    assert "See [a](../algorithms.md#rma)." in page and "<!--" not in page
    with pytest.raises(ValueError, match=r"README\.md has no section titled 'Missing'"):
        hooks.include_readme_sections("<!-- readme-section: Missing -->", "index.md", readme)
    assert hooks.link_examples("[x](../examples/sam_prompt_masks.py)", "integration-sam.md") == (
        "[x](examples.md#sam_prompt_masks)"
    )
    real = (ROOT / "README.md").read_text()
    for page in DOCS.glob("*.md"):  # every section the site asks for exists in the README
        for title in re.findall(r"^<!-- readme-section: (.+?) -->$", page.read_text(), re.M):
            assert hooks.readme_section(real, title).startswith("#"), (page.name, title)


def test_docstrings_become_markdown_with_fenced_doctests_and_checked_references():
    pytest.importorskip("griffe")
    tool = _docs_tool("griffe_docstrings")
    text = "Sum.\n\nExample:\n    >>> f([1])\n    [1]\n    >>> x\n\nText:\n>>> y\n[a]\n"
    fenced = tool.fence_doctests(text)
    assert fenced == (
        "Sum.\n\nExample:\n    ```pycon\n    >>> f([1])\n    [1]\n    >>> x\n    ```\n\n"
        "Text:\n\n```pycon\n>>> y\n[a]\n```\n"
    )
    assert tool.fence_doctests(fenced) == fenced  # a fenced block is left alone
    assert tool.literal_openers("is::\n\n    code") == "is:\n\n    code"

    import griffe

    root = griffe.load("rankseg", search_paths=[str(ROOT / "src")])
    scope = root["metrics"]
    text = (
        ":func:`segmentation_counts`, :class:`rankseg.RankSEG`, :mod:`rankseg._expected`, "
        ":class:`torch.Tensor`, :func:`rankseg.metrics.no_such_name`"
    )
    expected = (
        "[`segmentation_counts`][rankseg.metrics.segmentation_counts], "
        "[`rankseg.RankSEG`][rankseg.RankSEG], `rankseg._expected`, `torch.Tensor`, "
        "[`rankseg.metrics.no_such_name`][rankseg.metrics.no_such_name]"  # broken: fails the build
    )
    assert tool.roles_to_references(root, scope, text) == expected
