"""benchmarks/bench_train.py end to end at a tiny size: every backend and the channels_last network are
timed in one run, and the equivariance share is reported only where it has a baseline."""

from __future__ import annotations

import json
import subprocess
import sys

from repo_paths import ROOT


def test_bench_train_writes_every_variant(tmp_path):
    out = tmp_path / "train.json"
    argv = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--size", "32", "--batch", "2"]
    argv += ["--repeats", "1", "--warmup", "0", "--threads", "1", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {row["backend"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"fused", "torch", "kornia", "no equivariance", "fused, channels_last"}
    assert all(row["iteration_ms"] > 0 for row in rows.values())
    assert rows["fused"]["ratio_to_fused"] == 1.0 and rows["no equivariance"]["equivariance_ms"] == 0.0
    assert rows["fused, channels_last"]["equivariance_ms"] is None and rows["fused, channels_last"]["share"] is None
    assert rows["fused"]["equivariance_ms"] == rows["fused"]["iteration_ms"] - rows["no equivariance"]["iteration_ms"]
    assert "fused, channels_last" in done.stdout
