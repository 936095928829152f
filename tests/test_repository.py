"""Repository hygiene that CI should enforce: lint, and the README commands CI runs."""

import shutil
import subprocess
import sys
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
