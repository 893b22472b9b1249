#!/usr/bin/env python
"""The ablation of the method on the built-in synthetic phantoms (docs/evaluation.md).

Trains every variant of :data:`mmcam.objective.ABLATIONS` -- CAM only (classification), ER only
(SEAM-style, per modality), ER + KD, ER + CMER and the full method -- with the same preset, budget and
seeds, through ``mmcam.train.main`` (so each run is an ordinary run directory with its test evaluation
in ``results.json``), then writes the table of test Dice, mean ± std over seeds, as markdown and JSON::

    python benchmarks/ablation.py [--seeds 3 | --seeds 0,1,2] [--epochs 5] [--variants cam,er,...]
                                  [--preset quick] [--runs runs/ablation] [--out benchmarks/results]
                                  [--set key=value ...] [--aggregate-only]

Runs go to ``RUNS/<variant>-seed<k>``. The script is resumable: a run whose ``results.json`` exists is
read, not retrained; a run interrupted after its first checkpoint continues with ``--resume``. Every
existing run must have been made with exactly the configuration this invocation asks for (else the
script stops and names the run), so a table never mixes budgets. The numbers are whatever the runs
measured; nothing is tuned here.

Outputs: ``OUT/ablation_synthetic.md`` and ``OUT/ablation_synthetic.json`` (written atomically), and the
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mmcam import train
from mmcam.atomic_files import atomic_write_text
from mmcam.objective import ABLATIONS

#: Table rows, in this order, with their names in the table.
VARIANT_LABELS = {
    "cam": "CAM only (classification)",
    "er": "ER only (SEAM-style)",
    "er_kd": "ER + KD",
    "er_cmer": "ER + CMER",
    "full": "full (ER + CMER + KD)",
}
COMBINED = "combined"
TABLE_NAME = "ablation_synthetic"
SIDE_FILE = "ablation_run.json"  # per run: its command and the wall time of the invocation that finished it


# ------------------------------------------------------------------------------------- arguments
def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"0,4,7"`` -> ``[0, 4, 7]``; ``"5,"`` -> ``[5]``."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r}: give a count >= 1 (3 means 0,1,2) or a comma-separated list (0,1,2; one seed: 5,)"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seeds must be distinct")
    return seeds


def parse_variants(text: str) -> list[str]:
    variants = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ABLATIONS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"--variants: unknown {unknown}; choose from {', '.join(ABLATIONS)}")
    return variants


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/ablation.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--seeds",
        type=parse_seeds,
        default=parse_seeds("3"),
        help="number of seeds (0..K-1) or a comma-separated list (default 3)",
    )
    p.add_argument("--epochs", type=int, help="epochs per run (default: the preset's)")
    p.add_argument(
        "--variants",
        type=parse_variants,
        default=list(ABLATIONS),
        help=f"comma-separated subset of {','.join(ABLATIONS)} (default: all)",
    )
    p.add_argument("--preset", default="quick", help="training preset (default quick: synthetic CPU budget)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (repeatable), e.g. --set batch_size=8",
    )
    p.add_argument("--runs", type=Path, default=Path("runs/ablation"), help="run directories (default runs/ablation)")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="table folder (default benchmarks/results)"
    )
    p.add_argument("--aggregate-only", action="store_true", help="train nothing; tabulate the finished runs")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ runs
def run_path(runs: Path, variant: str, seed: int) -> Path:
    return runs / f"{variant}-seed{seed}"


def train_argv(args: argparse.Namespace, variant: str, seed: int) -> list[str]:
    """The ``mmcam.train`` command line of one run: the preset, seed, budget and ablation switches."""
    argv = [
        "--run-dir",
        str(run_path(args.runs, variant, seed)),
        "--preset",
        args.preset,
        "--seed",
        str(seed),
        "--no-progress",
    ]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    switches = [f"{key}={str(value).lower()}" for key, value in ABLATIONS[variant].items()]
    return argv + list(args.overrides) + switches


def expected_config(argv: list[str]) -> dict[str, Any]:
    """The resolved config ``mmcam.train`` would write for ``argv`` (to check an existing run against)."""
    config, _ = train.resolved_config(train.parse_args(argv))
    return config.to_dict()


def check_same_config(run_dir: Path, expected: dict[str, Any]) -> None:
    """Stop when an existing run was made with another configuration (another budget, preset, ...)."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    changed = {
        k: (saved.get(k), expected.get(k))
        for k in sorted(set(saved) | set(expected))
        if k not in ("workers",) and saved.get(k) != expected.get(k)
    }
    if changed:
        detail = ", ".join(f"{k}: run {a!r} vs asked {b!r}" for k, (a, b) in changed.items())
        raise SystemExit(
            f"error: {run_dir} was trained with another configuration ({detail}); use another "
            f"--runs folder or delete that run"
        )


def ensure_run(args: argparse.Namespace, variant: str, seed: int) -> Path:
    """Train (or finish) one run unless its ``results.json`` exists; return the run directory."""
    argv = train_argv(args, variant, seed)
    run_dir = run_path(args.runs, variant, seed)
    expected = expected_config(argv)
    if (run_dir / "config.yaml").is_file():
        check_same_config(run_dir, expected)
    if (run_dir / "results.json").is_file():
        print(f"[ablation] {run_dir}: done, reusing its results.json", flush=True)
        return run_dir
    if args.aggregate_only:
        raise SystemExit(f"error: {run_dir / 'results.json'} is missing (--aggregate-only trains nothing)")
    if (run_dir / "last.pt").is_file():
        print(f"[ablation] {run_dir}: interrupted, resuming from last.pt", flush=True)
        command = ["--resume", str(run_dir), "--no-progress"]
    else:
        if run_dir.exists():  # a start that crashed before its first checkpoint: nothing to keep
            print(f"[ablation] {run_dir}: no checkpoint, starting it again", flush=True)
            shutil.rmtree(run_dir)
        command = argv
    print(f"[ablation] python -m mmcam.train {' '.join(command)}", flush=True)
    start = time.perf_counter()
    code = train.main(command)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"error: training {run_dir} exited with status {code}; rerun this script to continue")
    atomic_write_text(
        run_dir / SIDE_FILE, json.dumps({"argv": argv, "seconds": seconds, "resumed": command != argv}, indent=2)
    )
    return run_dir


def read_run(run_dir: Path) -> dict[str, Any]:
    """The parts of a finished run the table needs: results, config and (when recorded) wall time."""
    record = {
        "run_dir": str(run_dir),
        "results": json.loads((run_dir / "results.json").read_text()),
        "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
    }
    side = run_dir / SIDE_FILE
    if side.is_file():
        record["seconds"] = json.loads(side.read_text())["seconds"]
    return record


# ------------------------------------------------------------------------------------ aggregation
def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof = 1; ``None`` for one value) of per-seed values."""
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "per_seed": values,
    }


def aggregate(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: mean ± std over seeds of each run's mean per-patient test Dice (combined and per
    modality) and test accuracy.

    Args:
        runs: ``{variant: {seed: record}}`` with ``record["results"]`` a run's ``results.json``.

    Returns:
        ``{variant: {"label", "switches", "seeds", "dice": {name: mean_std}, "test_accuracy": {...}}}``.
    """
    table = {}
    for variant, by_seed in runs.items():
        seeds = sorted(by_seed)
        names = list(by_seed[seeds[0]]["results"]["dice"])
        for seed in seeds:
            got = list(by_seed[seed]["results"]["dice"])
            if sorted(got) != sorted(names):
                raise ValueError(f"{variant} seed {seed}: results for {got}, other seeds for {names}")
        accuracy_names = list(by_seed[seeds[0]]["results"].get("test_accuracy", {}))
        table[variant] = {
            "label": VARIANT_LABELS.get(variant, variant),
            "switches": ABLATIONS.get(variant),
            "seeds": seeds,
            "dice": {name: mean_std([by_seed[s]["results"]["dice"][name]["mean"] for s in seeds]) for name in names},
            "test_accuracy": {
                name: mean_std([by_seed[s]["results"]["test_accuracy"][name] for s in seeds]) for name in accuracy_names
            },
        }
    return table


def shared_budget(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The configuration every run shares (all keys but the seed and the ablation switches); raises if
    two runs differ in any other key."""
    varying = {"seed", "use_cls", "use_kd", "use_er", "use_cmer", "workers"}
    reference, where = None, None
    for variant, by_seed in runs.items():
        for seed, record in by_seed.items():
            config = {k: v for k, v in record["config"].items() if k not in varying}
            if reference is None:
                reference, where = config, record.get("run_dir", f"{variant} seed {seed}")
            elif config != reference:
                keys = sorted(k for k in set(config) | set(reference) if config.get(k) != reference.get(k))
                raise ValueError(f"{record.get('run_dir', f'{variant} seed {seed}')} differs from {where} in {keys}")
    return reference or {}


def format_mean_std(entry: dict[str, Any]) -> str:
    return f"{entry['mean']:.3f}" + (f" ± {entry['std']:.3f}" if entry["std"] is not None else "")


def markdown_table(table: dict[str, Any], modalities: Sequence[str]) -> str:
    """The rows of the table: combined Dice then each modality's Dice, ``mean ± std`` over seeds."""
    header = ["variant", "L_C", "L_KD", "L_ER", "L_CMER", "Dice combined"] + [f"Dice {m}" for m in modalities]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.values():
        switches = row["switches"] or {}
        marks = ["✓" if switches.get(f"use_{t}") else "" for t in ("cls", "kd", "er", "cmer")]
        cells = [row["label"], *marks, format_mean_std(row["dice"][COMBINED])]
        cells += [format_mean_std(row["dice"][m]) for m in modalities]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_budget(budget: dict[str, Any], seeds: Sequence[int], steps: int | None) -> str:
    parts = [f"preset `{budget.get('preset')}`", f"{budget.get('epochs')} epochs"]
    if steps is not None:
        parts.append(f"{steps} steps")
    parts += [
        f"batch {budget.get('batch_size')}",
        f"lr {budget.get('lr')}",
        f"weight decay {budget.get('weight_decay')}",
        f"width/{budget.get('width_divisor')}",
        f"transform `{budget.get('transform')}`",
    ]
    data = (
        f"synthetic {budget.get('synthetic_layout')} phantoms ({budget.get('synthetic_subjects')} subjects)"
        if budget.get("data") is None
        else f"data {budget.get('data')}"
    )
    return f"{data}; {', '.join(parts)}; seeds {', '.join(map(str, seeds))}"


def build_report(
    runs: dict[str, dict[int, dict[str, Any]]],
    seeds: Sequence[int],
    environment: dict[str, Any] | None = None,
    command: str = "python benchmarks/ablation.py",
) -> tuple[dict[str, Any], str]:
    """The JSON document and the markdown text of the ablation table (``command``: how it was made)."""
    table = aggregate(runs)
    budget = shared_budget(runs)
    first = next(iter(next(iter(runs.values())).values()))
    modalities = [n for n in first["results"]["dice"] if n != COMBINED]
    protocol = first["results"].get("protocol", "")
    steps = {r.get("steps") for by_seed in runs.values() for r in by_seed.values()} - {None}
    seconds = [r["seconds"] for by_seed in runs.values() for r in by_seed.values() if "seconds" in r]
    document = {
        "experiment": "ablation of the loss terms on the synthetic phantoms",
        "command": command,
        "statistic": "per run: mean over test patients of the per-patient 3-D Dice (results.json); "
        "table: mean ± sample std (ddof=1) of that value over seeds",
        "protocol": protocol,
        "seeds": list(seeds),
        "budget": budget,
        "steps_per_run": steps.pop() if len(steps) == 1 else None,
        "wall_seconds_per_run_median": statistics.median(seconds) if seconds else None,
        "wall_seconds_total": sum(seconds) if seconds else None,
        "environment": environment or {},
        "variants": table,
        "runs": {v: {str(s): r.get("run_dir") for s, r in by_seed.items()} for v, by_seed in runs.items()},
    }
    lines = [
        f"Ablation on the synthetic phantoms (`{command}`): test Dice (per patient, 3-D), mean ± std over "
        f"{len(seeds)} seeds (sample std; each seed's value is the mean over the test patients).",
        "",
        markdown_table(table, modalities),
        "",
        f"Budget (identical for every row): {describe_budget(budget, seeds, document['steps_per_run'])}.",
    ]
    if budget.get("data") is None:
        lines.append(
            "Every run sees the same phantoms and the same patient split (generated with seed 0); the "
            "training seed changes the initialisation, the batch order and the transforms π."
        )
    if protocol:
        lines.append(f"Protocol: {protocol}.")
    if seconds:
        lines.append(
            f"Wall time on {(environment or {}).get('machine', 'this machine')}: "
            f"median {document['wall_seconds_per_run_median']:.0f} s per run, {sum(seconds) / 60:.0f} min "
            "in all (training + evaluation; the machine may have been shared)."
        )
    return document, "\n".join(lines) + "\n"


def cpu_name() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    import torch

    import mmcam

    return {
        "mmcam": getattr(mmcam, "__version__", None),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads",
        "platform": platform.platform(),
    }


def run_steps(run_dir: Path) -> int | None:
    """Optimiser steps of a finished run (from ``last.pt``), or ``None`` when it is not there."""
    from mmcam.training import checkpoint as ckpt

    path = run_dir / "last.pt"
    return int(ckpt.load(path)["state"]["step"]) if path.is_file() else None


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the table (the options that change what is trained)."""
    parts = ["python benchmarks/ablation.py", f"--seeds {','.join(map(str, args.seeds))}"]
    if args.epochs is not None:
        parts.append(f"--epochs {args.epochs}")
    if args.variants != list(ABLATIONS):
        parts.append(f"--variants {','.join(args.variants)}")
    if args.preset != "quick":
        parts.append(f"--preset {args.preset}")
    parts += [f"--set {item}" for item in args.overrides]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in args.seeds:  # seed-major order: an interrupted sweep already has every variant of seed 0
        for variant in args.variants:
            run_dir = ensure_run(args, variant, seed)
            record = read_run(run_dir)
            record["steps"] = run_steps(run_dir)
            runs.setdefault(variant, {})[seed] = record
    runs = {v: runs[v] for v in args.variants}
    document, text = build_report(runs, args.seeds, environment(), command_line(args))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{TABLE_NAME}.json", json.dumps(document, indent=2, allow_nan=False))
    atomic_write_text(args.out / f"{TABLE_NAME}.md", text)
    print(text)
    print(f"[ablation] wrote {args.out / (TABLE_NAME + '.md')} and {args.out / (TABLE_NAME + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
