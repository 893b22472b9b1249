#!/usr/bin/env python
"""Side-by-side timing of the fused equivariance operators against their references (docs/benchmarks.md).

In one process, for every case (shape x transform family), every thread count and both operators

    equivariance_terms  ``mmcam.losses.equivariance_terms`` (ER and CMER of all M networks)
    equivariance_loss   the single-pair ``mmcam.ops.equivariance_loss(src, matrix, dst, weight,
                        distance="sq_l2", l2_normalize=True, reduction="mean")`` with C = M channels
                        (the CMER-like case), gradients to both ``src`` and ``dst``

this script times the forward pass and the forward+backward pass of

    fused    the C++ operator
    torch    eager PyTorch, F.affine_grid + F.grid_sample warp (``mmcam.ops.reference`` / ``backend="torch"``)
    kornia   eager PyTorch, kornia warp_affine (``mmcam.ops.reference`` / ``backend="kornia"``)
    compile  torch.compile of the torch reference (inductor; skipped with ``--no-compile``)

Before timing a case it checks that every method gives the same values and gradients as the fused
operator (see :func:`compare`; a mismatch aborts the run). Each number is the median over ``--repeats`` timed runs after
warm-up (``--large-repeats`` and one warm-up call for the large shapes, whose eager calls take seconds);
one timed run loops the call enough times to last ~``--min-time`` seconds, and the methods' runs are
interleaved round-robin so that load from other processes hits them alike. Ratios are
``time(method) / time(fused)`` (> 1: fused is faster). Timed inputs: all labels, predictions and weights 1
(no sample skipped: the slowest case for the fused operator).

Bandwidth: the minimum bytes a pass must move (forward reads both CAM tensors; forward+backward reads
them twice and writes both gradients) over its time, next to a copy bandwidth (``Tensor.copy_`` of 256 MiB)
measured in the same run.

Peak memory of one call (forward, and forward+backward) of each method, the bytes allocated on top of
what was allocated before the call (inputs excluded; outputs and gradients included):
  CPU   ``torch.profiler`` with ``profile_memory=True``: the running sum of the allocation and free
        events of PyTorch's CPU allocator during the call. It sees every tensor (eager, kornia, inductor
        buffers, tensors the C++ operator allocates) made on the calling thread; not memory a kernel
        takes with plain malloc/new, nor allocations on worker threads.
  CUDA  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` minus the allocation before.

``--device cuda``: CUDA-event timing after synchronisation, the device name in the JSON and on every
row, a device-to-device copy bandwidth, one thread count (not varied). When the build has no CUDA kernel
for the fused operator its rows are skipped and the reason recorded (agreement is then checked against
the torch reference and ratios are empty).

Output with ``--json RUN.json``: the JSON (machine, versions, device, arguments, rows), ``RUN.md`` (tables)
and ``RUN.png`` (forward+backward times, log scale; needs matplotlib), see ``bench_report.py``.

Usage (``--help`` lists the options)::

    python benchmarks/bench_ops.py --json benchmarks/results/cpu-2vcpu-equivariance_ops.json
    python benchmarks/bench_ops.py --device cuda --json "$OUT/cuda-equivariance_ops.json"
    python benchmarks/bench_ops.py --device cuda --shapes paper large planes2048 --json "$OUT/cuda-ops.json"
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mmcam import ops
from mmcam.losses import equivariance_terms
from mmcam.ops import reference
from mmcam.transforms import sample_transform

import bench_report

SHAPES = {  # name: (N, M, H, W); "tiny" is for the tests
    "paper": (16, 2, 240, 240),
    "small": (8, 2, 64, 64),
    "large": (64, 4, 256, 256),
    # few, large planes: 4096 tiles of 1024 pixels per plane on CUDA, where per-tile partial results must
    # be reduced once per plane (a cost quadratic in the tile count would show here); opt-in, not a default
    "planes2048": (2, 2, 2048, 2048),
    "tiny": (2, 2, 16, 16),
}
#: Shapes timed with ``--large-repeats`` runs after a single warm-up call.
LARGE_SHAPES = ("large", "planes2048")
#: ``atol`` of the agreement check (see :func:`compare`) where the float32 eager references are less
#: accurate than the default allows: with 4M pixels per plane their l2-normalised pair-loss gradients are
#: off by 1.1 % of the largest one against float64 (measured on the CPU; the fused operator: 3e-7).
AGREEMENT_ATOL = {"planes2048": 3e-2}
PAPER_FAMILIES = ("flip", "rot90", "translate", "resize")
BACKENDS = bench_report.METHODS
OPS = ("equivariance_terms", "equivariance_loss")
LOSS_OPTIONS = dict(distance="sq_l2", l2_normalize=True, reduction="mean")


@dataclass
class Case:
    op: str
    shape: str
    family: str
    n: int
    m: int
    src: tuple[int, int]
    dst: tuple[int, int]
    args: tuple  # the positional arguments of the operator
    grad_idx: tuple[int, ...]  # which of them get gradients


def make_case(shape: str, family: str, seed: int, dtype: torch.dtype, device: torch.device) -> Case:
    """The ``equivariance_terms`` case: (cams, cams_t, matrix, labels, pred, pred_t) on ``device``."""
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
    args = tuple(t.to(device) for t in (cams((h, w)), cams(dsize), matrix, ones, pred, pred.clone()))
    return Case("equivariance_terms", shape, family, n, m, (h, w), tuple(dsize), args, (0, 1))


def loss_case(terms: Case) -> Case:
    """The ``equivariance_loss`` case on the same tensors: (src=cams, matrix, dst=cams_t, weight=1)."""
    cams, cams_t, matrix, labels = terms.args[:4]
    return Case(
        "equivariance_loss",
        terms.shape,
        terms.family,
        terms.n,
        terms.m,
        terms.src,
        terms.dst,
        (cams, matrix, cams_t, labels.to(cams.dtype)),
        (0, 2),
    )


def method_functions(op: str, use_compile: bool) -> dict[str, Callable]:
    """The methods compared for ``op``: fused, torch, kornia and (optionally) compile."""
    if op == "equivariance_terms":
        fns = {b: functools.partial(equivariance_terms, backend=b) for b in ("fused", "torch", "kornia")}
    else:
        fns = {
            name: functools.partial(fn, **LOSS_OPTIONS)
            for name, fn in (
                ("fused", ops.equivariance_loss),
                ("torch", reference.equivariance_loss_torch),
                ("kornia", reference.equivariance_loss_kornia),
            )
        }
    if use_compile:
        fns["compile"] = torch.compile(fns["torch"], dynamic=False)
    return fns


def forward(fn, args):
    return fn(*args)


def forward_backward(fn, args, grad_idx):
    """Forward with fresh leaf copies of ``args[grad_idx]``, ``out.sum().backward()``;
    returns (output, *gradients)."""
    leaves = {i: args[i].detach().requires_grad_(True) for i in grad_idx}
    out = fn(*(leaves.get(i, a) for i, a in enumerate(args)))
    out.sum().backward()
    return (out.detach(), *(leaves[i].grad for i in grad_idx))


def compare(name: str, ref_name: str, out, ref, labels, where: str, rtol: float = 1e-4, atol: float = 1e-2) -> None:
    """Raise AssertionError unless every tensor of ``out`` matches ``ref`` within ``rtol`` and
    ``atol * max |ref|``. The atol is loose for float32 because the eager references are: with
    l2_normalize their gradients are off by ~3e-4 of the largest one at 256x256 and up to ~3e-3 at the
    paper shape (torch.compile on equivariance_loss, flip: 2.2e-13 of 6.8e-11), while the fused operator
    is within ~2e-6 of float64; a wrong method is off by O(1)."""
    for label, a, b in zip(labels, out, ref):
        scale = float(b.abs().max()) or 1.0
        if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol * scale):
            err = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
            raise AssertionError(
                f"{name} disagrees with {ref_name} on {label} for {where}: max abs diff {err:.3g} "
                f"(max |{ref_name}| {scale:.3g}, shapes {tuple(a.shape)} / {tuple(b.shape)})"
            )


def check_agreement(fns: dict[str, Callable], case: Case, compile_status: dict) -> str | None:
    """Run every method once (forward+backward, and forward; this also compiles) and compare with the
    first method (fused, or torch when fused is skipped). A failing compile is dropped from ``fns`` and
    its error returned; any other disagreement or error is raised."""
    ref_name = next(iter(fns))
    where = f"{case.op} {case.shape}/{case.family}"
    labels = ("value", *(f"grad of argument {i}" for i in case.grad_idx))
    ref = forward_backward(fns[ref_name], case.args, case.grad_idx)
    for name in [n for n in fns if n != ref_name]:
        t0 = time.perf_counter()
        try:
            out = forward_backward(fns[name], case.args, case.grad_idx)
            fwd = forward(fns[name], case.args)
        except Exception as exc:  # noqa: BLE001 -- torch.compile may fail on a toolchain
            if name != "compile":
                raise
            del fns[name]
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            compile_status.setdefault("errors", []).append(msg)
            return msg
        if name == "compile":
            compile_status["seconds"] = compile_status.get("seconds", 0.0) + time.perf_counter() - t0
        atol = AGREEMENT_ATOL.get(case.shape, 1e-2)
        compare(name, ref_name, out, ref, labels, where, atol=atol)
        compare(name + " (forward only)", ref_name, (fwd,), ref[:1], labels, where, atol=atol)
    return None


# ------------------------------------------------------------------------------------------- timing
def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _calibrate(call: Callable[[], object], warmup: int, min_time: float, cuda: bool = False) -> int:
    """Run ``warmup`` untimed calls; return how many calls make a timed block of about ``min_time``."""
    _sync(cuda)
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        call()
    _sync(cuda)
    per_call = (time.perf_counter() - t0) / max(warmup, 1)
    return max(1, int(min_time / max(per_call, 1e-9)))


def _block(call: Callable[[], object], inner: int, cuda: bool = False) -> float:
    """Seconds per call of ``inner`` back-to-back calls (CUDA: between two recorded events)."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(inner):
            call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        call()
    return (time.perf_counter() - t0) / inner


def time_interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, min_time: float, cuda: bool = False
) -> dict[str, float]:
    """Median seconds per call of each call over ``repeats`` timed blocks (each looping the call
    ~``min_time`` s), the calls' blocks interleaved round-robin so that load from other processes on a
    shared machine hits every method alike (fairer ratios)."""
    inner = {name: _calibrate(call, warmup, min_time, cuda) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            samples[name].append(_block(call, inner[name], cuda))
    return {name: statistics.median(v) for name, v in samples.items()}


def copy_bandwidth(repeats: int, device: torch.device) -> float:
    """Bytes/s of a 256 MiB tensor copy on ``device`` (read + write counted), larger than the caches."""
    src = torch.empty(64 * 2**20, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    call = lambda: dst.copy_(src)  # noqa: E731
    t = time_interleaved({"copy": call}, repeats, 2, 0.05, device.type == "cuda")["copy"]
    return 2 * src.numel() * src.element_size() / t


def min_bytes(case: Case, backward: bool) -> int:
    """The bytes a pass must at least move: read the CAM tensors (and for backward re-read them and
    write their gradients)."""
    inputs = sum(case.args[i].numel() * case.args[i].element_size() for i in case.grad_idx)
    return inputs * 3 if backward else inputs


# ------------------------------------------------------------------------------------------- memory
@contextlib.contextmanager
def _profiler_stderr_filtered():
    """Kineto prints two 'USDT: ... profiler_start/stop' lines per profile on fd 2: drop those, keep the rest."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sys.stderr.writelines(
                ln for ln in tmp.read().decode(errors="replace").splitlines(True) if not ln.startswith("USDT:")
            )


def _peak_cpu(call: Callable[[], object]) -> int | None:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _profiler_stderr_filtered(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    total = peak = 0
    for _, size in sorted(events):
        total += size
        peak = max(peak, total)
    return peak


def peak_memory(call: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one ``call()`` on top of what was allocated before (see the module
    docstring); None when it cannot be measured here."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        return _peak_cpu(call)
    except (ImportError, AttributeError, RuntimeError):  # private profiler API changed
        return None


# ------------------------------------------------------------------------------------------ running
def fused_unavailable(op: str, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the fused ``op`` cannot run on ``device`` (e.g. no CUDA kernel in this build), or None."""
    if device.type == "cpu":
        return None
    case = make_case("tiny", "translate", 0, dtype, device)
    case = case if op == "equivariance_terms" else loss_case(case)
    try:
        forward_backward(method_functions(op, False)["fused"], case.args, case.grad_idx)
        _sync(device.type == "cuda")
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    return None


def run_case(
    case: Case, fns: dict[str, Callable], a: argparse.Namespace, device: torch.device, compile_status: dict
) -> tuple[dict, dict]:
    """Agreement check, interleaved timings and peak memory of every method for one case."""
    err = check_agreement(fns, case, compile_status)
    if err is not None:
        print(f"   (torch.compile failed, dropped: {err})")
    repeats, warmup = (a.large_repeats, 1) if case.shape in LARGE_SHAPES else (a.repeats, a.warmup)
    cuda = device.type == "cuda"
    fwd_calls = {name: functools.partial(forward, fn, case.args) for name, fn in fns.items()}
    fb_calls = {name: functools.partial(forward_backward, fn, case.args, case.grad_idx) for name, fn in fns.items()}
    fwd = time_interleaved(fwd_calls, repeats, warmup, a.min_time, cuda)
    fb = time_interleaved(fb_calls, repeats, warmup, a.min_time, cuda)
    peaks = {name: (peak_memory(fwd_calls[name], device), peak_memory(fb_calls[name], device)) for name in fns}
    return {name: (fwd[name], fb[name]) for name in fns}, peaks


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="CPU: torch.set_num_threads values to run (default: 1 and all cores); ignored on CUDA",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--large-repeats", type=int, default=3, help="timed runs for the large shapes")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (large shapes: 1)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed run (the call is looped)")
    p.add_argument("--shapes", nargs="+", default=["paper", "small", "large"], choices=list(SHAPES))
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    p.add_argument(
        "--families",
        nargs="+",
        default=list(PAPER_FAMILIES),
        choices=list(PAPER_FAMILIES) + ["affine"],
        help="π families of the paper shape",
    )
    p.add_argument(
        "--small-family",
        default="translate",
        choices=list(PAPER_FAMILIES) + ["affine"],
        help="π family of the other shapes",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile method")
    p.add_argument("--json", default=None, help="write the results to this JSON file, plus STEM.md and STEM.png")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG plot")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def build_cases(a: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> list[Case]:
    cases = []
    for shape in a.shapes:
        for k, family in enumerate(a.families if shape == "paper" else [a.small_family]):
            terms = make_case(shape, family, a.seed + k, dtype, device)
            cases += [c for c in (terms, loss_case(terms)) if c.op in a.ops]
    return cases


def main(argv=None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype = getattr(torch, a.dtype)
    threads = (
        [torch.get_num_threads()] if cuda else a.threads or sorted({1, torch.get_num_threads(), os.cpu_count() or 1})
    )
    cases = build_cases(a, dtype, device)
    skipped = {op: why for op in a.ops if (why := fused_unavailable(op, dtype, device))}
    info = bench_report.machine_info(threads, device)
    results, compile_status = [], {"enabled": not a.no_compile}
    where = info["device_name"] if cuda else f"{info['cpu_model']} ({info['cpu_count']} logical CPUs)"
    print(
        f"# mmcam equivariance operators benchmark: torch {info['torch']}, kornia {info['kornia']}, {where}, "
        f"{a.dtype}, median of {a.repeats}"
    )
    for op, why in skipped.items():
        print(f"fused {op} skipped on {info['device_name']}: {why}")
    for nthreads in threads:
        if not cuda:
            torch.set_num_threads(nthreads)
        if not a.no_compile:
            torch._dynamo.reset()  # inductor bakes the thread count into its kernels: recompile per count
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        fns_by_op = {}
        for op in a.ops:
            fns_by_op[op] = method_functions(op, not a.no_compile)
            if op in skipped:
                del fns_by_op[op]["fused"]
        bandwidth = copy_bandwidth(a.repeats, device)
        print(f"\n## {'device' if cuda else f'threads={nthreads}'}   memory copy: {bandwidth / 1e9:.2f} GB/s")
        print(bench_report.console_header())
        for case in cases:
            timings, peaks = run_case(case, fns_by_op[case.op], a, device, compile_status)
            for name in BACKENDS:
                row = bench_report.result_row(
                    case,
                    name,
                    nthreads,
                    timings,
                    peaks,
                    bandwidth,
                    info["device_name"],
                    (min_bytes(case, False), min_bytes(case, True)),
                )
                print(bench_report.console_line(row))
                if name in timings:
                    results.append(row)
        if "seconds" in compile_status:
            warm = compile_status.pop("seconds")
            compile_status.setdefault("warmup_s_by_threads", {})[str(nthreads)] = warm
            print(f"(torch.compile first calls incl. compilation, all cases: {warm:.1f} s)")

    if a.json:
        payload = dict(
            machine=info,
            args=vars(a),
            compile=compile_status,
            skipped=skipped,
            memory_method=bench_report.MEMORY_METHOD[device.type],
            results=results,
        )
        print("\n".join(bench_report.write_all(payload, a.json, not a.no_plot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
