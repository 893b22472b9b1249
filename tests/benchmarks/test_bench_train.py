"""benchmarks/bench_train.py end to end at a tiny size: every backend and the network variants
(channels_last, bfloat16 autocast) are timed in one run, and the equivariance share is reported only where
it has a baseline."""

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
    network_variants = {"fused, channels_last", "fused, bf16 autocast", "fused, channels_last + bf16"}
    assert set(rows) == {"fused", "torch", "kornia", "no equivariance"} | network_variants
    assert all(row["iteration_ms"] > 0 for row in rows.values())
    assert rows["fused"]["ratio_to_fused"] == 1.0 and rows["no equivariance"]["equivariance_ms"] == 0.0
    assert all(rows[v]["equivariance_ms"] is None and rows[v]["share"] is None for v in network_variants)
    assert rows["fused"]["equivariance_ms"] == rows["fused"]["iteration_ms"] - rows["no equivariance"]["iteration_ms"]
    assert all(v in done.stdout for v in network_variants)
