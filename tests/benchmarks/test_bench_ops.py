"""benchmarks/bench_ops.py: a tiny run end to end (JSON, markdown, plot) and its correctness guards
(the agreement check rejects a wrong method; the CPU peak-memory measurement sees torch allocations).
Speed is not asserted here (docs/benchmarks.md: benchmarks report speed, tests assert correctness)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from repo_paths import ROOT

BENCHMARKS = ROOT / "benchmarks"
SCRIPT = BENCHMARKS / "bench_ops.py"
METHODS = ("fused", "torch", "kornia")
OPS = ("equivariance_terms", "equivariance_loss")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_ops_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--shapes",
        "tiny",
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--min-time",
        "0.001",
        "--threads",
        "1",
        "--no-compile",
        "--json",
        str(out / "run.json"),
    ]
    proc = subprocess.run(cmd, cwd=out, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "USDT:" not in proc.stderr  # the profiler's start/stop lines are filtered
    return out, json.loads((out / "run.json").read_text())


def test_json_structure(tiny_run):
    _, payload = tiny_run
    machine = payload["machine"]
    for key in ("torch", "kornia", "device", "device_name", "cpu_model", "threads", "git"):
        assert key in machine
    assert machine["device"] == "cpu" and machine["threads"] == [1]
    assert payload["skipped"] == {} and "profiler" in payload["memory_method"]
    rows = payload["results"]
    assert sorted((r["op"], r["backend"]) for r in rows) == sorted((o, m) for o in OPS for m in METHODS)
    for r in rows:
        assert r["shape"] == "tiny" and r["threads"] == 1 and r["device"] == machine["device_name"]
        assert r["forward_s"] > 0 and r["forward_backward_s"] > 0 and r["copy_GBps"] > 0
        assert r["forward_GBps"] > 0 and r["forward_backward_GBps"] > 0
        assert isinstance(r["peak_forward_bytes"], int) and isinstance(r["peak_forward_backward_bytes"], int)
        if r["backend"] == "fused":
            assert r["forward_ratio_to_fused"] == 1.0 == r["forward_backward_ratio_to_fused"]
        # forward+backward keeps both input gradients alive at the end: at least their bytes
        n, m, (hs, ws), (hd, wd) = r["n"], r["m"], r["src"], r["dst"]
        assert r["peak_forward_backward_bytes"] >= 4 * n * m * (hs * ws + hd * wd)


def test_markdown_and_plot(tiny_run):
    out, _ = tiny_run
    md = (out / "run.md").read_text()
    assert "## `equivariance_terms`, 1 thread " in md and "## `equivariance_loss`, 1 thread " in md
    table_rows = [line for line in md.splitlines() if line.startswith("| tiny/")]
    assert len(table_rows) == len(OPS) * len(METHODS)
    assert all(line.count("|") == 11 for line in table_rows)
    assert "| tiny/translate 2,2,16x16->16x16 | fused | " in md and "1.00x" in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("op", OPS)
def test_agreement_check_rejects_a_wrong_method(bench, op):
    case = bench.make_case("tiny", "translate", 0, torch.float32, torch.device("cpu"))
    case = case if op == "equivariance_terms" else bench.loss_case(case)
    fns = bench.method_functions(op, use_compile=False)
    assert bench.check_agreement(dict(fns), case, {}) is None  # the real methods agree

    fused = fns["fused"]
    wrong = {"fused": fused, "torch": lambda *args: fused(*args) * 1.05}  # 5 % off in value and gradients
    with pytest.raises(AssertionError, match="torch disagrees with fused on value"):
        bench.check_agreement(wrong, case, {})

    ref = bench.forward_backward(fused, case.args, case.grad_idx)
    grads_off = (ref[0], ref[1] + 0.05 * ref[1].abs().max(), *ref[2:])  # only one gradient perturbed
    with pytest.raises(AssertionError, match="grad of argument 0"):
        bench.compare("x", "fused", grads_off, ref, ("value", "grad of argument 0", "grad"), "here")


def test_peak_memory_sees_torch_cpu_allocations(bench):
    mib = 2**20
    both_alive = bench.peak_memory(lambda: [torch.ones(mib), torch.ones(mib)], torch.device("cpu"))
    one_at_a_time = bench.peak_memory(lambda: [torch.ones(mib).sum() for _ in range(2)], torch.device("cpu"))
    assert 8 * mib <= both_alive < 9 * mib
    assert 4 * mib <= one_at_a_time < 5 * mib


def test_large_planes_shape_is_opt_in(bench):
    """The 2048x2048 planes (issue 12: per-plane reductions over 4096 tiles on CUDA) are a --shapes choice,
    timed like the large shape, with the agreement tolerance their float32 references need, and not part
    of the default run (which stays fast on the CPU)."""
    assert bench.SHAPES["planes2048"] == (2, 2, 2048, 2048)
    assert "planes2048" in bench.LARGE_SHAPES and bench.AGREEMENT_ATOL["planes2048"] > 1e-2
    assert "planes2048" not in bench.parse_args([]).shapes
    assert bench.parse_args(["--shapes", "planes2048"]).shapes == ["planes2048"]
