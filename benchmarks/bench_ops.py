#!/usr/bin/env python
"""Side-by-side timing of ``mmcam.losses.equivariance_terms`` backends (DESIGN §6).

In one process, for every case (shape x transform family) and every thread count, this script times
the forward pass and the forward+backward pass of the equivariance terms with

    fused    the C++ operator (``backend="fused"``)
    torch    eager PyTorch, F.affine_grid + F.grid_sample warp (``backend="torch"``)
    kornia   eager PyTorch, kornia warp_affine (``backend="kornia"``)
    compile  torch.compile of the ``"torch"`` backend (inductor; skipped with ``--no-compile``)

Before timing a case it checks that every backend gives the same loss values and gradients. Each
number is the median over ``--repeats`` timed runs after warm-up; one timed run loops the call enough
times to last ~``--min-time`` seconds, and the backends' runs are interleaved round-robin so
that load from other processes hits them alike. Ratios are ``time(backend) / time(fused)`` (> 1: fused is faster).
Timed inputs: all labels and predictions 1 (no sample skipped: the slowest case for the fused operator).

The fused columns also give achieved bandwidth: the minimum bytes the pass must move (forward reads
``cams`` and ``cams_t``; forward+backward reads them twice and writes both gradients) over its time,
next to a memory-copy bandwidth (``torch.Tensor.copy_`` of 256 MiB) measured in the same run.

Usage::

    python benchmarks/bench_ops.py [--threads K [K ...]] [--repeats R] [--json OUT] [--no-compile]
                                   [--shapes paper small large] [--families flip rot90 translate resize]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import mmcam
from mmcam.losses import equivariance_terms
from mmcam.transforms import sample_transform

SHAPES = {  # name: (N, M, H, W)
    "paper": (16, 2, 240, 240),
    "small": (8, 2, 64, 64),
    "large": (64, 4, 256, 256),
}
PAPER_FAMILIES = ("flip", "rot90", "translate", "resize")
BACKENDS = ("fused", "torch", "kornia", "compile")


@dataclass
class Case:
    shape: str
    family: str
    n: int
    m: int
    src: tuple[int, int]
    dst: tuple[int, int]
    args: tuple  # (cams, cams_t, matrix, labels, pred, pred_t)


def make_case(shape: str, family: str, seed: int, dtype: torch.dtype) -> Case:
    n, m, h, w = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    matrix, dsize, _ = sample_transform(n, (h, w), policy=family, generator=gen, dtype=dtype)

    def cams(size):  # a positive blob on noise: realistic min/max and zero regions
        hh, ww = size
        yy = torch.linspace(-1, 1, hh, dtype=dtype)[:, None]
        xx = torch.linspace(-1, 1, ww, dtype=dtype)[None, :]
        blob = 3.0 * torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) * 4)
        return torch.randn(n, m, hh, ww, generator=gen, dtype=dtype) + blob

    ones = torch.ones(n, dtype=torch.long)
    pred = torch.ones(n, m, dtype=torch.long)
    args = (cams((h, w)), cams(dsize), matrix, ones, pred, pred.clone())
    return Case(shape, family, n, m, (h, w), tuple(dsize), args)


def backend_functions(use_compile: bool) -> dict[str, Callable]:
    fns = {b: functools.partial(equivariance_terms, backend=b) for b in ("fused", "torch", "kornia")}
    if use_compile:
        fns["compile"] = torch.compile(functools.partial(equivariance_terms, backend="torch"), dynamic=False)
    return fns


def forward(fn, args):
    return fn(*args)


def forward_backward(fn, args):
    cams = args[0].detach().requires_grad_(True)
    cams_t = args[1].detach().requires_grad_(True)
    terms = fn(cams, cams_t, *args[2:])
    terms.sum().backward()
    return terms.detach(), cams.grad, cams_t.grad


def check_agreement(fns: dict[str, Callable], case: Case, compile_status: dict) -> Optional[str]:
    """Run every backend once (forward+backward; this also compiles) and compare with fused.
    Returns an error message for the compile backend if compiling failed (it is then dropped)."""
    ref = forward_backward(fns["fused"], case.args)
    for name in list(fns):
        if name == "fused":
            continue
        t0 = time.perf_counter()
        try:
            out = forward_backward(fns[name], case.args)
            fwd = forward(fns[name], case.args)
        except Exception as exc:  # noqa: BLE001 -- torch.compile may fail on a CPU toolchain
            if name != "compile":
                raise
            del fns[name]
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            compile_status.setdefault("errors", []).append(msg)
            return msg
        if name == "compile":
            compile_status["seconds"] = compile_status.get("seconds", 0.0) + time.perf_counter() - t0
        for label, a, b in zip(("terms", "grad cams", "grad cams_t"), out, ref):
            scale = float(b.abs().max()) or 1.0
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale):
                err = float((a - b).abs().max())
                raise AssertionError(f"{name} disagrees with fused on {label} for {case.shape}/{case.family}: "
                                     f"max abs diff {err:.3g} (max |fused| {scale:.3g})")
        if not torch.allclose(fwd, ref[0], rtol=1e-4, atol=1e-5 * (float(ref[0].abs().max()) or 1.0)):
            raise AssertionError(f"{name} forward disagrees with fused for {case.shape}/{case.family}")
    return None


def _calibrate(call: Callable[[], object], warmup: int, min_time: float) -> int:
    """Run ``warmup`` untimed calls; return how many calls make a timed block of about ``min_time``."""
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        call()
    per_call = (time.perf_counter() - t0) / max(warmup, 1)
    return max(1, int(min_time / max(per_call, 1e-9)))


def _block(call: Callable[[], object], inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        call()
    return (time.perf_counter() - t0) / inner


def time_call(call: Callable[[], object], repeats: int, warmup: int, min_time: float) -> float:
    """Median seconds per call over ``repeats`` timed blocks (each looping the call ~``min_time`` s)."""
    inner = _calibrate(call, warmup, min_time)
    return statistics.median(_block(call, inner) for _ in range(repeats))


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     min_time: float) -> dict[str, float]:
    """Like :func:`time_call` for several calls, with their timed blocks interleaved round-robin, so
    that load from other processes on a shared machine hits every backend alike (fairer ratios)."""
    inner = {name: _calibrate(call, warmup, min_time) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            samples[name].append(_block(call, inner[name]))
    return {name: statistics.median(v) for name, v in samples.items()}


def copy_bandwidth(repeats: int) -> float:
    """Bytes/s of a 256 MiB tensor copy (read + write counted), larger than the last-level cache."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), repeats, 2, 0.05)
    return 2 * src.numel() * src.element_size() / t


def min_bytes(case: Case, backward: bool) -> int:
    cams, cams_t = case.args[:2]
    inputs = (cams.numel() + cams_t.numel()) * cams.element_size()
    return inputs * 3 if backward else inputs  # backward: re-read inputs, write both gradients


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state() -> dict:
    """Commit of the source tree and whether it has uncommitted changes (what the numbers measured)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def machine_info(threads: list[int]) -> dict:
    try:
        import kornia
        kornia_version = kornia.__version__
    except Exception:  # noqa: BLE001
        kornia_version = None
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=sys.version.split()[0],
        platform=platform.platform(),
        torch=torch.__version__,
        kornia=kornia_version,
        mmcam=mmcam.__version__,
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        threads=threads,
        device="cpu",
        git=git_state(),
    )
    try:
        bi = mmcam.build_info()
        info["mmcam_build"] = {k: v for k, v in bi.items() if k != "parallel_backend"}
    except Exception:  # noqa: BLE001
        pass
    return info


def fmt_ms(t: Optional[float]) -> str:
    return f"{t * 1e3:9.2f}" if t is not None else f"{'-':>9}"


def fmt_ratio(t: Optional[float], ref: Optional[float]) -> str:
    return f"{t / ref:7.2f}x" if (t is not None and ref) else f"{'-':>8}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch.set_num_threads values to run (default: 1 and all cores)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed run (the call is looped)")
    p.add_argument("--shapes", nargs="+", default=["paper", "small"], choices=sorted(SHAPES))
    p.add_argument("--families", nargs="+", default=list(PAPER_FAMILIES),
                   choices=list(PAPER_FAMILIES) + ["affine"], help="π families of the paper shape")
    p.add_argument("--small-family", default="translate", choices=list(PAPER_FAMILIES) + ["affine"],
                   help="π family of the small and large shapes")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile backend")
    p.add_argument("--json", default=None, help="write results and machine info to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    dtype = getattr(torch, a.dtype)
    threads = a.threads or sorted({1, torch.get_num_threads(), os.cpu_count() or 1})
    cases = []
    for shape in a.shapes:
        families = a.families if shape == "paper" else [a.small_family]
        for k, family in enumerate(families):
            cases.append(make_case(shape, family, a.seed + k, dtype))

    info = machine_info(threads)
    results, compile_status = [], {"enabled": not a.no_compile}
    print(f"# mmcam equivariance_terms benchmark: torch {info['torch']}, kornia {info['kornia']}, "
          f"{info['cpu_model']} ({info['cpu_count']} logical CPUs), {a.dtype}, median of {a.repeats}")
    for nthreads in threads:
        torch.set_num_threads(nthreads)
        if not a.no_compile:
            torch._dynamo.reset()  # inductor bakes the thread count into its kernels: recompile per count
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        fns = backend_functions(not a.no_compile)
        bandwidth = copy_bandwidth(a.repeats)
        print(f"\n## threads={nthreads}   memory copy: {bandwidth / 1e9:.2f} GB/s")
        header = (f"{'shape':<6} {'family':<9} {'N,M,src->dst':<24} {'backend':<8} {'fwd ms':>9} {'fwd/fused':>9} "
                  f"{'f+b ms':>9} {'f+b/fused':>9}")
        print(header)
        print("-" * len(header))
        for case in cases:
            err = check_agreement(fns, case, compile_status)
            if err is not None:
                print(f"   (torch.compile failed, dropped: {err})")
            fwd = time_interleaved({name: functools.partial(forward, fn, case.args) for name, fn in fns.items()},
                                   a.repeats, a.warmup, a.min_time)
            fb = time_interleaved({name: functools.partial(forward_backward, fn, case.args)
                                   for name, fn in fns.items()}, a.repeats, a.warmup, a.min_time)
            timings = {name: (fwd[name], fb[name]) for name in fns}
            geom = f"{case.n},{case.m},{case.src[0]}x{case.src[1]}->{case.dst[0]}x{case.dst[1]}"
            for name in BACKENDS:
                t_fwd, t_fb = timings.get(name, (None, None))
                print(f"{case.shape:<6} {case.family:<9} {geom:<24} {name:<8} {fmt_ms(t_fwd)} "
                      f"{fmt_ratio(t_fwd, timings['fused'][0]):>9} {fmt_ms(t_fb)} "
                      f"{fmt_ratio(t_fb, timings['fused'][1]):>9}")
                row = dict(threads=nthreads, shape=case.shape, family=case.family, n=case.n, m=case.m,
                           src=list(case.src), dst=list(case.dst), backend=name, dtype=a.dtype,
                           forward_s=t_fwd, forward_backward_s=t_fb,
                           forward_ratio_to_fused=(t_fwd / timings["fused"][0]) if t_fwd else None,
                           forward_backward_ratio_to_fused=(t_fb / timings["fused"][1]) if t_fb else None)
                if name == "fused":
                    row["forward_GBps"] = min_bytes(case, False) / t_fwd / 1e9
                    row["forward_backward_GBps"] = min_bytes(case, True) / t_fb / 1e9
                    row["copy_GBps"] = bandwidth / 1e9
                results.append(row)
            fused = [r for r in results if r["backend"] == "fused"][-1]
            print(f"{'':<6} {'':<9} {'':<24} {'fused':<8} {fused['forward_GBps']:8.2f} GB/s "
                  f"({100 * fused['forward_GBps'] / fused['copy_GBps']:.0f}% of copy) fwd, "
                  f"{fused['forward_backward_GBps']:.2f} GB/s f+b")
        if "seconds" in compile_status:
            warm = compile_status.pop("seconds")
            compile_status.setdefault("warmup_s_by_threads", {})[str(nthreads)] = warm
            print(f"(torch.compile first calls incl. compilation, all cases: {warm:.1f} s; "
                  "inductor's on-disk cache makes later compilations cheaper)")

    if a.json:
        payload = dict(machine=info, args=vars(a), compile=compile_status, results=results)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, a.json)
        print(f"\nwrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
