"""Machine description and rendering (markdown table, PNG plot) for ``benchmarks/bench_ops.py``.

The functions here read the JSON payload that ``bench_ops.py`` writes::

    {"machine": {...}, "args": {...}, "compile": {...}, "skipped": {...}, "results": [row, ...]}

with one row per (threads, op, case, method), made by :func:`result_row`. They can
also be used on their own to re-render a recorded run::

    python benchmarks/bench_report.py benchmarks/results/RUN.json   # writes RUN.md and RUN.png
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

import torch

import mmcam

from readme_blocks import replace_block

METHODS = ("fused", "torch", "kornia", "compile")
MEMORY_METHOD = {  # how bench_ops.peak_memory measures, per device type
    "cpu": "extra bytes PyTorch's CPU allocator holds at the peak of one call (torch.profiler, "
    "profile_memory=True; inputs excluded, outputs and gradients included)",
    "cuda": "torch.cuda.max_memory_allocated during one call minus the allocation before it",
}


# ------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
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
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:

        def git(*args):
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _cpu_isa() -> str | None:
    """The instruction-set variant mmcam's CPU kernels run (``mmcam._C.cpu_isa()``), if the build says."""
    try:
        from mmcam.ops.extension import _C

        return _C.cpu_isa()
    except Exception:  # noqa: BLE001  (an older build without it)
        return None


def machine_info(threads: list[int], device: torch.device) -> dict:
    """Versions, CPU, device name and build information recorded with every run."""
    try:
        import kornia

        kornia_version = kornia.__version__
    except Exception:  # noqa: BLE001
        kornia_version = None
    cuda = device.type == "cuda"
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
        threads_varied=not cuda,
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if cuda else cpu_model(),
        cuda_runtime=torch.version.cuda if cuda else None,
        git=git_state(),
        cpu_isa=_cpu_isa(),
    )
    try:
        bi = mmcam.build_info()
        info["mmcam_build"] = {k: v for k, v in bi.items() if k != "parallel_backend"}
    except Exception:  # noqa: BLE001
        pass
    return info


# --------------------------------------------------------------------------------------------- rows
def result_row(
    case,
    name: str,
    threads: int,
    timings: dict,
    peaks: dict,
    copy_bps: float,
    device_name: str,
    min_bytes: tuple[int, int],
) -> dict:
    """One JSON result row of method ``name`` on ``case`` (a ``bench_ops.Case``).

    ``timings``/``peaks``: {method: (forward, forward+backward)} seconds / peak bytes; ``min_bytes``: the
    bytes each pass must move. Ratios are relative to fused; None where fused or the method is missing.
    """
    t_fwd, t_fb = timings.get(name, (None, None))
    ref_fwd, ref_fb = timings.get("fused", (None, None))
    row = dict(
        threads=threads,
        op=case.op,
        shape=case.shape,
        family=case.family,
        n=case.n,
        m=case.m,
        src=list(case.src),
        dst=list(case.dst),
        backend=name,
        dtype=str(case.args[0].dtype).split(".")[-1],
        device=device_name,
        forward_s=t_fwd,
        forward_backward_s=t_fb,
        forward_ratio_to_fused=t_fwd / ref_fwd if (t_fwd and ref_fwd) else None,
        forward_backward_ratio_to_fused=t_fb / ref_fb if (t_fb and ref_fb) else None,
        forward_GBps=min_bytes[0] / t_fwd / 1e9 if t_fwd else None,
        forward_backward_GBps=min_bytes[1] / t_fb / 1e9 if t_fb else None,
        copy_GBps=copy_bps / 1e9,
    )
    row["peak_forward_bytes"], row["peak_forward_backward_bytes"] = peaks.get(name, (None, None))
    return row


# ------------------------------------------------------------------------------------------ console
def console_header() -> str:
    """Column titles (and a rule) of :func:`console_line`."""
    header = (
        f"{'op':<6} {'shape':<10} {'family':<9} {'N,M,src->dst':<26} {'method':<8} {'fwd ms':>9} "
        f"{'/fused':>9} {'f+b ms':>9} {'/fused':>9} {'f+bGB/s':>7} {'peakMiB':>8}"
    )
    return header + "\n" + "-" * len(header)


def console_line(row: dict) -> str:
    """One result row as a line of the console table ('-' where a value is missing)."""

    def fmt(v, spec, scale=1.0):
        return format(v * scale, spec) if v is not None else "-"

    geom = f"{row['n']},{row['m']},{row['src'][0]}x{row['src'][1]}->{row['dst'][0]}x{row['dst'][1]}"
    return (
        f"{row['op'].replace('equivariance_', ''):<6} {row['shape']:<10} {row['family']:<9} {geom:<26} "
        f"{row['backend']:<8} {fmt(row['forward_s'], '9.2f', 1e3):>9} "
        f"{fmt(row['forward_ratio_to_fused'], '8.2f'):>8}x {fmt(row['forward_backward_s'], '9.2f', 1e3):>9} "
        f"{fmt(row['forward_backward_ratio_to_fused'], '8.2f'):>8}x {fmt(row['forward_backward_GBps'], '7.2f'):>7} "
        f"{fmt(row['peak_forward_backward_bytes'], '8.1f', 2**-20):>8}"
    )


# ----------------------------------------------------------------------------------------- markdown
def _ms(t: float | None) -> str:
    return f"{t * 1e3:.2f}" if t is not None else "-"


def _ratio(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "-"


def _mib(b: int | None) -> str:
    return f"{b / 2**20:.1f}" if b is not None else "-"


def _bandwidth(row: dict, key: str) -> str:
    gbps = row.get(key)
    if gbps is None:
        return "-"
    return f"{gbps:.2f} ({100 * gbps / row['copy_GBps']:.0f}%)" if row.get("copy_GBps") else f"{gbps:.2f}"


def case_label(row: dict) -> str:
    """``shape/family N,C,HsxWs->HdxWd`` of a result row."""
    (hs, ws), (hd, wd) = row["src"], row["dst"]
    return f"{row['shape']}/{row['family']} {row['n']},{row['m']},{hs}x{ws}->{hd}x{wd}"


def _groups(results: list[dict]) -> dict:
    """Rows grouped as {(threads, op): {case label: [rows]}}, in run order."""
    groups: dict = {}
    for row in results:
        groups.setdefault((row["threads"], row["op"]), {}).setdefault(case_label(row), []).append(row)
    return groups


def _header_lines(payload: dict) -> list[str]:
    m, a = payload["machine"], payload["args"]
    git = m.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    where = (
        f"{m['device_name']} (CUDA {m.get('cuda_runtime')})"
        if m["device"] == "cuda"
        else f"{m['cpu_model']}, {m['cpu_count']} logical CPUs"
        + (f" (mmcam CPU kernels: {m['cpu_isa']})" if m.get("cpu_isa") else "")
    )
    lines = [
        "# mmcam equivariance operators: fused vs eager torch vs eager kornia vs torch.compile",
        "",
        f"Machine: {where}; torch {m['torch']}, kornia {m['kornia']}, mmcam {m['mmcam']} ({commit}); "
        f"{m['date']}; {a['dtype']}.",
        f"Median of {a['repeats']} timed runs after warm-up (large shapes: {a['large_repeats']}). "
        "`x fused` = time(method) / time(fused): above 1, the fused operator is faster.",
        "GB/s: the minimum bytes a pass must move (forward reads both CAM tensors; forward+backward reads "
        "them twice and writes both gradients) over its time, and its share of the memory-copy bandwidth "
        "measured in the same run. Peak MiB: " + payload.get("memory_method", "") + ".",
    ]
    for key, reason in (payload.get("skipped") or {}).items():
        lines.append(f"**Skipped** fused `{key}`: {reason}.")
    for err in (payload.get("compile") or {}).get("errors", []):
        lines.append(f"**torch.compile failed** (dropped): {err}")
    return lines


def markdown(payload: dict) -> str:
    """The whole report as markdown: header, then one table per (threads, op)."""
    lines = _header_lines(payload)
    cols = (
        "case",
        "method",
        "fwd ms",
        "fwd x fused",
        "f+b ms",
        "f+b x fused",
        "fwd GB/s (% copy)",
        "f+b GB/s (% copy)",
        "peak MiB fwd",
        "peak MiB f+b",
    )
    for (threads, op), cases in _groups(payload["results"]).items():
        rows = next(iter(cases.values()))
        copy = rows[0].get("copy_GBps")
        cuda = payload["machine"]["device"] == "cuda"
        where = payload["machine"]["device_name"] if cuda else f"{threads} thread{'s' * (threads != 1)}"
        lines += [
            "",
            f"## `{op}`, {where} (memory copy {copy:.1f} GB/s)",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for label, rows in cases.items():
            for r in rows:
                lines.append(
                    f"| {label} | {r['backend']} | {_ms(r['forward_s'])} | "
                    f"{_ratio(r['forward_ratio_to_fused'])} | {_ms(r['forward_backward_s'])} | "
                    f"{_ratio(r['forward_backward_ratio_to_fused'])} | {_bandwidth(r, 'forward_GBps')} | "
                    f"{_bandwidth(r, 'forward_backward_GBps')} | {_mib(r.get('peak_forward_bytes'))} | "
                    f"{_mib(r.get('peak_forward_backward_bytes'))} |"
                )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- README summary
#: The CPU-speed targets (forward + backward, over both eager kornia and torch.compile): per π family at the
#: paper shape, and for the small shape whatever its family.
TARGETS = {"flip": 10.0, "rot90": 10.0, "translate": 8.0, "resize": 8.0, "affine": 5.0}
SMALL_TARGET = 3.0
#: π families that are pure permutations must also reach this share of the copy bandwidth of the run.
BANDWIDTH_TARGETS = {"flip": 0.3, "rot90": 0.3}
README_BEGIN, README_END = "<!-- bench_ops:begin -->", "<!-- bench_ops:end -->"


def target_of(row: dict) -> float | None:
    """The speed-up a fused row should reach over kornia and torch.compile (None: no target)."""
    if row["shape"] == "small":
        return SMALL_TARGET
    return TARGETS.get(row["family"]) if row["shape"] == "paper" else None


def target_text(row: dict, ratios: list[float]) -> str:
    """``met``, or what is missed (``4.1x of 10x``, ``6% of 30% copy bw``) by the fused ``row`` with the
    smallest of ``ratios`` (its speed-ups over kornia and torch.compile)."""
    target = target_of(row)
    if target is None or not ratios:
        return "-"
    missed = []
    if min(ratios) < target:
        missed.append(f"{min(ratios):.1f}x of {target:.0f}x")
    share = BANDWIDTH_TARGETS.get(row["family"]) if row["shape"] == "paper" else None
    gbps, copy = row.get("forward_backward_GBps"), row.get("copy_GBps")
    if share is not None and gbps and copy and gbps / copy < share:
        missed.append(f"{100 * gbps / copy:.0f}% of {100 * share:.0f}% copy bw")
    return "met" if not missed else "missed: " + ", ".join(missed)


def summary_table(payload: dict) -> str:
    """The README's table: per (op, case, threads), the fused forward+backward time, each competitor's time
    over it, the fused pass's share of the copy bandwidth, its peak memory, and the target's status."""
    lines = [
        "| op | case | threads | fused f+b ms | eager torch | kornia | torch.compile | % copy bw | "
        "fused peak MiB | target (vs kornia and compile) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (threads, op), cases in _groups(payload["results"]).items():
        for label, rows in cases.items():
            by = {r["backend"]: r for r in rows}
            fused = by.get("fused")
            if fused is None:
                continue
            ratio = {m: by[m]["forward_backward_ratio_to_fused"] for m in ("torch", "kornia", "compile") if m in by}
            gbps, copy = fused.get("forward_backward_GBps"), fused.get("copy_GBps")
            share = f"{100 * gbps / copy:.0f}" if gbps and copy else "-"
            versus = [ratio[m] for m in ("kornia", "compile") if ratio.get(m) is not None]
            cells = [
                "terms" if op == "equivariance_terms" else "loss",
                label,
                str(threads),
                _ms(fused["forward_backward_s"]),
                *(_ratio(ratio.get(m)) for m in ("torch", "kornia", "compile")),
                share,
                _mib(fused.get("peak_forward_backward_bytes")),
                target_text(fused, versus),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_readme_summary(payload: dict, readme: str) -> None:
    """Replace the block between :data:`README_BEGIN` and :data:`README_END` of ``readme`` with
    :func:`summary_table` (both markers must be there)."""
    replace_block(readme, (README_BEGIN, README_END), summary_table(payload))


# --------------------------------------------------------------------------------------------- plot
def plot(payload: dict, path: str) -> str | None:
    """Bar chart of forward+backward time per method per case (log scale), one panel per
    (threads, op). Returns None when written, else why not (e.g. matplotlib missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"matplotlib is not installed ({exc})"
    groups = _groups(payload["results"])
    fig, axes = plt.subplots(len(groups), 1, figsize=(11, 3.6 * len(groups)), squeeze=False)
    width = 0.8 / len(METHODS)
    for ax, ((threads, op), cases) in zip(axes[:, 0], groups.items()):
        labels = list(cases)
        for k, method in enumerate(METHODS):
            times = [next((r["forward_backward_s"] for r in cases[c] if r["backend"] == method), None) for c in labels]
            xs = [i + (k - (len(METHODS) - 1) / 2) * width for i, t in enumerate(times) if t]
            ax.bar(xs, [t * 1e3 for t in times if t], width, label=method)
        ax.set_yscale("log")
        ax.set_ylabel("forward+backward ms")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([c.split(" ")[0] for c in labels], fontsize=8)
        where = payload["machine"]["device_name"] if payload["machine"]["device"] == "cuda" else f"{threads} threads"
        ax.set_title(f"{op}, {where}", fontsize=10)
        ax.legend(fontsize=8, ncol=len(METHODS))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_all(payload: dict, json_path: str, make_plot: bool = True) -> list[str]:
    """Write the JSON (atomically), ``STEM.md`` and (unless ``make_plot`` is false) ``STEM.png``
    next to it; returns one message per file written or skipped."""
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path + ".tmp", "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(json_path + ".tmp", json_path)
    return [f"wrote {json_path}"] + write_reports(payload, json_path, make_plot)


def write_reports(payload: dict, json_path: str, make_plot: bool = True) -> list[str]:
    """Write ``STEM.md`` (and ``STEM.png`` unless ``make_plot`` is false) next to ``json_path``;
    returns one message per file written or skipped."""
    stem = os.path.splitext(json_path)[0]
    with open(stem + ".md", "w") as f:
        f.write(markdown(payload))
    messages = [f"wrote {stem}.md"]
    if make_plot:
        why = plot(payload, stem + ".png")
        messages.append(f"wrote {stem}.png" if why is None else f"plot skipped: {why}")
    return messages


def main(argv: list[str] | None = None) -> int:
    """``bench_report.py RUN.json [RUN.json ...] [--readme README.md]``: re-render each run's markdown and
    plot; with ``--readme``, write the summary table of the runs (in order) into the README's block."""
    import argparse

    parser = argparse.ArgumentParser(prog="python benchmarks/bench_report.py", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="JSON files written by bench_ops.py --json")
    parser.add_argument("--readme", help="also write the summary table between the bench_ops markers of this file")
    args = parser.parse_args(argv)
    payloads = []
    for path in args.runs:
        with open(path) as f:
            payloads.append(json.load(f))
        print("\n".join(write_reports(payloads[-1], path)))
    if args.readme:
        merged = {**payloads[0], "results": [row for p in payloads for row in p["results"]]}
        write_readme_summary(merged, args.readme)
        print(f"wrote the summary table into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
