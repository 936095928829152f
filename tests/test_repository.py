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
    for name in ("quickstart", "tests"):
        assert f"<!-- readme-command: {name} -->" in readme
    assert "-c constraints.txt" in readme
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()


def test_importing_rankseg_does_not_import_transformers():
    code = (
        "import sys, rankseg, rankseg.functional, rankseg.integration; print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
