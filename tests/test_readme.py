"""The README's Python blocks (quick start) run as written against the installed package."""

from __future__ import annotations

import re

import pytest

from readme_blocks import read_block
from repo_paths import ROOT

README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_a_quick_start():
    assert BLOCKS, "README.md has no ```python block"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize(
    "marker, recorded", [("ablation", "ablation_synthetic.md"), ("ablation-split", "ablation_synthetic_split.md")]
)
def test_readme_ablation_blocks_are_the_recorded_studies(marker, recorded):
    """The README's ablation tables are generated: the block between each pair of markers is that study's
    markdown."""
    block = read_block(README.read_text(), (f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"))
    assert block == (ROOT / "benchmarks" / "results" / recorded).read_text()


def test_readme_speed_table_is_the_recorded_run():
    """The README's speed table is generated from the recorded CPU run (bench_report.py --readme)."""
    import json

    import bench_report

    recorded = json.loads((ROOT / "benchmarks" / "results" / "cpu-2vcpu-equivariance_ops.json").read_text())
    block = read_block(README.read_text(), (bench_report.README_BEGIN, bench_report.README_END))
    assert block == bench_report.summary_table(recorded)
