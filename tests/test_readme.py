"""The README's Python blocks (quick start) run as written against the installed package."""

from __future__ import annotations

import re

import pytest

from repo_paths import ROOT

README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_quick_start():
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})


def test_readme_ablation_block_is_the_recorded_study():
    """The README's ablation table is generated: the block between its markers is the study's markdown."""
    text = README.read_text()
    block = text.split("<!-- ablation:begin -->\n", 1)[1].split("<!-- ablation:end -->", 1)[0]
    assert block == (ROOT / "benchmarks" / "results" / "ablation_synthetic.md").read_text()
