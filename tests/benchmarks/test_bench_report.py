"""benchmarks/bench_report.py's README summary: the targets of the CPU-speed issue judged from hand-made
rows (met, missed by a ratio, missed by bandwidth, no target), and the README block written between its
markers."""

from __future__ import annotations

import pytest

import bench_report


def rows(shape: str, family: str, fused_s: float, kornia_s: float, compile_s: float, gbps: float) -> list[dict]:
    base = {"threads": 1, "op": "equivariance_terms", "shape": shape, "family": family, "n": 16, "m": 2}
    base |= {"src": [240, 240], "dst": [240, 240], "copy_GBps": 40.0, "peak_forward_backward_bytes": 2**21}
    out = []
    for backend, seconds in (("fused", fused_s), ("torch", kornia_s), ("kornia", kornia_s), ("compile", compile_s)):
        out.append(
            base
            | {
                "backend": backend,
                "forward_backward_s": seconds,
                "forward_backward_ratio_to_fused": seconds / fused_s,
                "forward_backward_GBps": gbps if backend == "fused" else None,
            }
        )
    return out


def test_summary_judges_each_target():
    payload = {
        "results": rows("paper", "flip", 0.002, 0.025, 0.018, 8.0)  # 12.5x, 9x; 20 % of copy
        + rows("paper", "rot90", 0.002, 0.025, 0.030, 16.0)  # 12.5x, 15x; 40 %
        + rows("paper", "affine", 0.010, 0.060, 0.070, 2.0)  # 6x, 7x
        + rows("small", "translate", 0.001, 0.0025, 0.004, 1.0)  # 2.5x, 4x
        + rows("large", "translate", 0.1, 0.2, 0.3, 1.0)
    }
    lines = bench_report.summary_table(payload).splitlines()
    assert len(lines) == 2 + 5
    flip, rot90, affine, small, large = lines[2:]
    assert flip.startswith("| terms | paper/flip 16,2,240x240->240x240 | 1 | 2.00 | 12.50x | 12.50x | 9.00x | 20 |")
    assert flip.endswith("| missed: 9.0x of 10x, 20% of 30% copy bw |")
    assert rot90.endswith("| 40 | 2.0 | met |")
    assert affine.endswith("| met |")
    assert small.endswith("| missed: 2.5x of 3x |")
    assert large.endswith("| - |")


def test_readme_block_is_replaced(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{bench_report.README_BEGIN}\nold\n{bench_report.README_END}\noutro\n")
    payload = {"results": rows("paper", "affine", 0.010, 0.060, 0.070, 2.0)}
    bench_report.write_readme_summary(payload, str(readme))
    table = bench_report.summary_table(payload)
    assert readme.read_text() == f"intro\n{bench_report.README_BEGIN}\n{table}{bench_report.README_END}\noutro\n"
    (tmp_path / "other.md").write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- bench_ops:begin -->"):
        bench_report.write_readme_summary(payload, str(tmp_path / "other.md"))
