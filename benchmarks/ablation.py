#!/usr/bin/env python
"""The ablation study of the loss terms on synthetic phantoms (docs/evaluation.md, "The ablation").

One command runs the whole study, resumably::

    python benchmarks/ablation.py                       # the study: data, every run, the tables and plot
    python benchmarks/ablation.py --pilot               # the pilot that set the budget and the CMER weight
    python benchmarks/ablation.py --aggregate-only      # re-tabulate finished runs, train nothing

Design (fixed before the runs; the defaults of this script are the design):

- data: ``--subjects`` (60) synthetic BraTS-layout phantoms generated with seed 0, one patient split
  ``--fractions`` (0.4, 0.2, 0.4: 24 train / 12 validation / 24 test patients), prepared once into
  ``RUNS/data`` and shared by every run;
- training: preset ``quick`` (T1ce + FLAIR networks, width/8, AdamW lr 1e-3) for ``--steps`` optimiser
  steps, validated every ``--val-every`` steps; the reported checkpoint is the paper's (each modality's
  network at its best validation accuracy), the threshold is chosen on the 12 validation patients;
- variants (:data:`VARIANTS`): CAM only, ER, ER + KD, ER + CMER, the full method, and ER + CMER with
  ``lambda_cmer = --cmer-weight`` (the ratio of the ER to the CMER magnitude measured by the pilot);
- seeds ``--seeds`` (0..4): seed k of every variant has the same initialisation, batch order and π
  sequence (paired); nothing else differs between the runs of one seed;
- scores per test patient, per channel (each modality's map and the combined map): 3-D Dice at the
  validation threshold, and the threshold-free average precision of the map on the slices that hold
  target (mmcam.evaluation.ranking); plus each network's test slice accuracy;
- contrasts (:data:`CONTRASTS`): paired differences with 95 % bootstrap intervals over seeds and patients
  (ablation_stats).

Runs go to ``RUNS/<variant>-seed<k>``: a run whose ``results.json`` exists is read, an interrupted one is
resumed, one made with another configuration stops the script naming it. Outputs (atomic):
``OUT/ablation_synthetic.{json,md,png}``; ``--readme README.md`` also replaces the block between
``<!-- ablation:begin -->`` and ``<!-- ablation:end -->`` of that file with the markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmcam import train
from mmcam.atomic_files import atomic_write, atomic_write_text
from mmcam.objective import ABLATIONS

from ablation_stats import BOOTSTRAP_REPS, CONFIDENCE, Estimate, bootstrap_mean, paired_contrast, score_table
from readme_blocks import replace_block

#: The study's variants: their labels and the config keys that make them (the rest is the shared budget).
#: ``er_cmer_w`` gets ``lambda_cmer`` from ``--cmer-weight``.
VARIANTS: dict[str, str] = {
    "cam": "CAM only (classification)",
    "er": "ER only (SEAM-style)",
    "er_kd": "ER + KD",
    "er_cmer": "ER + CMER",
    "full": "full (ER + CMER + KD)",
    "er_cmer_w": "ER + CMER, CMER weighted to ER's scale",
}
#: Paired contrasts ``(a, b)``: the effect of what ``a`` adds to ``b``.
CONTRASTS: tuple[tuple[str, str], ...] = (
    ("full", "er"),
    ("er", "cam"),
    ("er_cmer", "er"),
    ("er_kd", "er"),
    ("er_cmer_w", "er"),
)
SCORES = {"dice": "Dice (3-D, validation threshold)", "ap": "AP (threshold-free, slices with target)"}
COMBINED = "combined"
TABLE_NAME = "ablation_synthetic"
#: Outputs and README block of each phantom family (``--tumour``): name, README markers.
STUDY_OUTPUTS: dict[str, tuple[str, tuple[str, str]]] = {
    "nested": (TABLE_NAME, ("<!-- ablation:begin -->", "<!-- ablation:end -->")),
    "split": (f"{TABLE_NAME}_split", ("<!-- ablation-split:begin -->", "<!-- ablation-split:end -->")),
}
PILOT_NAME = "ablation_pilot"
README_BEGIN, README_END = STUDY_OUTPUTS["nested"][1]
SIDE_FILE = "ablation_run.json"  # per run: its command and the wall time of the invocation that finished it
#: Keys that differ between the runs of the study by design (the rest must be equal).
VARYING_KEYS = frozenset({"seed", "use_cls", "use_kd", "use_er", "use_cmer", "lambda_cmer", "workers"})


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
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seeds must be distinct and >= 0")
    return seeds


def parse_variants(text: str) -> list[str]:
    variants = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    return variants


def parse_fractions(text: str) -> tuple[float, float, float]:
    from mmcam.data.errors import DataError
    from mmcam.data.splits import parse_fractions as parse

    try:
        return parse(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(f"--fractions: {exc}") from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/ablation.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("5"), help="a count (0..K-1) or a list (5)")
    p.add_argument("--variants", type=parse_variants, default=list(VARIANTS), help="comma-separated (all)")
    p.add_argument("--subjects", type=positive_int, default=60, help="synthetic phantoms (60)")
    p.add_argument(
        "--tumour",
        choices=tuple(STUDY_OUTPUTS),
        default="nested",
        help="phantom family: nested (default) or split (each lobe shown by one modality); docs/data.md",
    )
    p.add_argument("--fractions", type=parse_fractions, default=(0.4, 0.2, 0.4), help="train,val,test patients")
    p.add_argument("--steps", type=positive_int, default=300, help="optimiser steps per run (300, from the pilot)")
    p.add_argument("--val-every", type=positive_int, default=50, help="validate every N steps (50)")
    p.add_argument(
        "--cmer-weight", type=positive_float, default=200.0, help="lambda_cmer of er_cmer_w (200, from the pilot)"
    )
    p.add_argument("--preset", default="quick", help="training preset (quick)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override (all runs)"
    )
    p.add_argument("--runs", type=Path, help="run directories (runs/ablation; runs/ablation-split with --tumour split)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder (benchmarks/results)")
    p.add_argument("--readme", type=Path, help="also write the markdown into this file's ablation block")
    p.add_argument("--reps", type=positive_int, default=BOOTSTRAP_REPS, help="bootstrap replicates (10000)")
    p.add_argument("--aggregate-only", action="store_true", help="train nothing; tabulate the finished runs")
    p.add_argument("--pilot", action="store_true", help="run the pilot (full, seed 0) instead of the study")
    p.add_argument("--pilot-steps", type=positive_int, default=800, help="steps of the pilot (800)")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = Path("runs/ablation" if args.tumour == "nested" else f"runs/ablation-{args.tumour}")
    return args


# ------------------------------------------------------------------------------------------ data
def study_cache(args: argparse.Namespace) -> Path:
    """The phantoms of the study and their cache with its patient split (``RUNS/data``), made once."""
    from mmcam.data.build import prepare_raw
    from mmcam.data.cache import INDEX_FILE, SPLITS_FILE
    from mmcam.data.synthetic import MARKER_FILE, generate_synthetic

    root = args.runs / "data"
    cache = root / "cache"
    marker = root / "raw" / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("tumour", "nested") != args.tumour:
        raise SystemExit(f"error: {root} holds other phantoms than --tumour {args.tumour}; use another --runs folder")
    if (cache / INDEX_FILE).is_file() and (cache / SPLITS_FILE).is_file():
        splits = json.loads((cache / SPLITS_FILE).read_text())
        if list(splits.get("fractions", [])) != list(args.fractions):
            raise SystemExit(f"error: {cache} was split with {splits.get('fractions')}; use another --runs folder")
        return cache
    if args.aggregate_only:
        raise SystemExit(f"error: {cache} is missing (--aggregate-only prepares nothing)")
    raw = generate_synthetic(root / "raw", "brats", n_subjects=args.subjects, seed=0, tumour=args.tumour)
    prepare_raw(raw, cache, dataset="brats", fractions=args.fractions, seed=0, overwrite=cache.exists())
    return cache


# ------------------------------------------------------------------------------------------ runs
def run_path(runs: Path, variant: str, seed: int) -> Path:
    return runs / f"{variant}-seed{seed}"


def variant_keys(variant: str, cmer_weight: float) -> dict[str, Any]:
    """The config keys that make ``variant``."""
    switches: dict[str, Any] = dict(ABLATIONS["er_cmer" if variant == "er_cmer_w" else variant])
    if variant == "er_cmer_w":
        switches["lambda_cmer"] = cmer_weight
    return switches


def train_argv(
    args: argparse.Namespace, variant: str, seed: int, cache: Path, run_dir: Path | None = None
) -> list[str]:
    """The ``mmcam.train`` command line of one run: the preset, data, seed, budget and variant keys."""
    argv = [
        "--run-dir",
        str(run_dir or run_path(args.runs, variant, seed)),
        "--preset",
        args.preset,
        "--data",
        str(cache),
        "--seed",
        str(seed),
        "--max-steps",
        str(args.pilot_steps if args.pilot else args.steps),
        "--epochs",
        "1000000",  # the budget is --max-steps
        "--no-progress",
        f"val_every_steps={args.val_every}",
    ]
    keys = [f"{key}={str(value).lower()}" for key, value in variant_keys(variant, args.cmer_weight).items()]
    return argv + list(args.overrides) + keys


def expected_config(argv: list[str]) -> dict[str, Any]:
    """The resolved config ``mmcam.train`` would write for ``argv`` (to check an existing run against)."""
    config, _ = train.resolved_config(train.parse_args(argv))
    return config.to_dict()


def check_same_config(run_dir: Path, expected: dict[str, Any]) -> None:
    """Stop when an existing run was made with another configuration (another budget, preset, ...)."""
    from mmcam.training import config as cfg

    # keys added to mmcam since the run was made read as their defaults, as when the run is loaded
    saved = cfg.apply(cfg.TrainConfig(), yaml.safe_load((run_dir / "config.yaml").read_text()), "run").to_dict()
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


def ensure_run(argv: list[str], run_dir: Path, aggregate_only: bool) -> Path:
    """Train (or finish) one run unless its ``results.json`` exists; return the run directory."""
    expected = expected_config(argv)
    if (run_dir / "config.yaml").is_file():
        check_same_config(run_dir, expected)
    if (run_dir / "results.json").is_file():
        print(f"[ablation] {run_dir}: done, reusing its results.json", flush=True)
        return run_dir
    if aggregate_only:
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
    """The parts of a finished run the study needs: results, config and (when recorded) wall time."""
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
def shared_budget(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """The configuration every run shares (all keys but :data:`VARYING_KEYS`); raises ``ValueError`` naming
    the run and keys when two runs differ in any other key."""
    reference, where = None, None
    for variant, by_seed in runs.items():
        for seed, record in by_seed.items():
            config = {k: v for k, v in record["config"].items() if k not in VARYING_KEYS}
            name = record.get("run_dir", f"{variant} seed {seed}")
            if reference is None:
                reference, where = config, name
            elif config != reference:
                keys = sorted(k for k in set(config) | set(reference) if config.get(k) != reference.get(k))
                raise ValueError(f"{name} differs from {where} in {keys}")
    return reference or {}


def per_patient(record: dict[str, Any], score: str, channel: str) -> dict[str, float]:
    """``{patient: value}`` of one run's ``results.json`` (``score``: ``dice`` or ``ap``)."""
    return record["results"][score][channel]["per_patient"]


def study_tables(
    runs: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int]
) -> tuple[list[str], list[str], dict[str, dict[str, dict[str, np.ndarray]]]]:
    """``(channels, patients, {variant: {score: {channel: (S, P) table}}})``; every run must score the same
    patients and channels."""
    first = runs[next(iter(runs))][seeds[0]]
    channels = list(first["results"]["dice"])
    patients = sorted(per_patient(first, "dice", COMBINED))
    tables: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for variant, by_seed in runs.items():
        for seed in seeds:
            got = sorted(by_seed[seed]["results"]["dice"])
            if got != sorted(channels):
                raise ValueError(f"{variant} seed {seed}: channels {got}, expected {sorted(channels)}")
        tables[variant] = {
            score: {
                c: score_table({s: per_patient(by_seed[s], score, c) for s in seeds}, seeds, patients) for c in channels
            }
            for score in SCORES
        }
    return channels, patients, tables


def accuracy_table(by_seed: dict[int, dict[str, Any]], seeds: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Test slice accuracy per network: mean and range over seeds."""
    names = list(by_seed[seeds[0]]["results"].get("test_accuracy", {}))
    out = {}
    for name in names:
        values = [float(by_seed[s]["results"]["test_accuracy"][name]) for s in seeds]
        out[name] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "per_seed": values}
    return out


def analyse(
    runs: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int], reps: int = BOOTSTRAP_REPS
) -> dict[str, Any]:
    """Per variant: every score's mean and interval per channel and the test accuracy; per contrast (both
    variants present): the paired difference and its interval per score and channel."""
    channels, patients, tables = study_tables(runs, seeds)
    variants = {
        v: {
            "label": VARIANTS.get(v, v),
            "keys": variant_keys(v, float(runs[v][seeds[0]]["config"].get("lambda_cmer", 1.0))),
            "scores": {
                score: {c: bootstrap_mean(tables[v][score][c], reps).as_dict() for c in channels} for score in SCORES
            },
            "per_seed_mean": {
                score: {c: np.nanmean(tables[v][score][c], axis=1).tolist() for c in channels} for score in SCORES
            },
            "test_accuracy": accuracy_table(runs[v], seeds),
        }
        for v in runs
    }
    contrasts = [
        {
            "a": a,
            "b": b,
            "scores": {
                score: {c: paired_contrast(tables[a][score][c], tables[b][score][c], reps).as_dict() for c in channels}
                for score in SCORES
            },
        }
        for a, b in CONTRASTS
        if a in runs and b in runs
    ]
    modalities = [c for c in channels if c != COMBINED]
    pair_gains = {
        v: {
            score: {
                m: paired_contrast(tables[v][score][COMBINED], tables[v][score][m], reps).as_dict() for m in modalities
            }
            for score in SCORES
        }
        for v in runs
    }
    return {
        "channels": channels,
        "patients": patients,
        "variants": variants,
        "contrasts": contrasts,
        "pair_gains": pair_gains,
    }


# -------------------------------------------------------------------------------------- reporting
def as_estimate(entry: dict[str, Any]) -> Estimate:
    return Estimate(entry["mean"], entry["low"], entry["high"], entry["n"])


def variant_table(analysis: dict[str, Any]) -> str:
    """Markdown: per variant, Dice and AP per channel (mean [95 % interval]) and test accuracy."""
    channels = analysis["channels"]
    modalities = [c for c in channels if c != COMBINED]
    header = ["variant"] + [f"{s} {c}" for s in ("Dice", "AP") for c in channels]
    header += [f"test acc. {m}" for m in modalities]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in analysis["variants"].values():
        cells = [row["label"]]
        cells += [as_estimate(row["scores"][s][c]).format() for s in ("dice", "ap") for c in channels]
        acc = row["test_accuracy"]
        cells += [f"{acc[m]['mean']:.2f} ({acc[m]['min']:.2f}-{acc[m]['max']:.2f})" for m in modalities if m in acc]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contrast_cell(entry: dict[str, Any]) -> str:
    """A paired difference as a table cell: signed mean [interval], in bold where the interval excludes 0."""
    estimate = as_estimate(entry)
    text = estimate.format(signed=True)
    return f"**{text}**" if estimate.excludes_zero else text


def contrast_table(analysis: dict[str, Any]) -> str:
    """Markdown: per contrast, the paired difference of Dice and AP per channel (mean [95 % interval]), in
    bold where the interval excludes 0."""
    channels = analysis["channels"]
    header = ["contrast"] + [f"Δ{s} {c}" for s in ("Dice", "AP") for c in channels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for contrast in analysis["contrasts"]:
        cells = [f"{contrast['a']} − {contrast['b']}"]
        cells += [contrast_cell(contrast["scores"][s][c]) for s in ("dice", "ap") for c in channels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pair_gain_table(analysis: dict[str, Any]) -> str:
    """Markdown: per variant, the combined map minus each modality's map (paired over seeds and patients),
    Dice and AP, in bold where the interval excludes 0."""
    gains = analysis["pair_gains"]
    modalities = [c for c in analysis["channels"] if c != COMBINED]
    header = ["variant"] + [f"Δ{s} {COMBINED} − {m}" for s in ("Dice", "AP") for m in modalities]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, by_score in gains.items():
        cells = [analysis["variants"][variant]["label"]]
        cells += [contrast_cell(by_score[s][m]) for s in ("dice", "ap") for m in modalities]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def findings(analysis: dict[str, Any]) -> list[str]:
    """One sentence per contrast: what its intervals establish, per score, on every channel."""
    out = []
    for contrast in analysis["contrasts"]:
        label = f"{VARIANTS.get(contrast['a'], contrast['a'])} vs {VARIANTS.get(contrast['b'], contrast['b'])}"
        parts = []
        for s, name in (("dice", "Dice"), ("ap", "AP")):
            up, down, none = [], [], []
            for c, entry in contrast["scores"][s].items():
                estimate = as_estimate(entry)
                (up if estimate.low > 0 else down if estimate.high < 0 else none).append(c)
            said = []
            if up:
                said.append(f"higher on {', '.join(up)}")
            if down:
                said.append(f"lower on {', '.join(down)}")
            if none:
                said.append(f"no difference established on {', '.join(none)}")
            parts.append(f"{name} " + "; ".join(said))
        out.append(f"- {label}: " + ". ".join(parts) + ".")
    return out


def describe_design(
    budget: dict[str, Any], seeds: Sequence[int], n_patients: int, splits: dict[str, Any], tumour: str = "nested"
) -> str:
    sizes = splits.get("sizes", {})
    return (
        f"{budget.get('synthetic_layout', 'brats')}-layout phantoms, {tumour} tumours (data {budget.get('data')}; "
        f"{sizes.get('train', '?')} train / {sizes.get('val', '?')} validation / {n_patients} test patients), "
        f"preset `{budget.get('preset')}` ({', '.join(budget.get('modalities') or [])}, width/"
        f"{budget.get('width_divisor')}, lr {budget.get('lr')}, weight decay {budget.get('weight_decay')}, batch "
        f"{budget.get('batch_size')}), {budget.get('max_steps')} steps, validation every "
        f"{budget.get('val_every_steps')} steps, seeds {', '.join(map(str, seeds))} (paired across variants)"
    )


def build_report(
    runs: dict[str, dict[int, dict[str, Any]]],
    seeds: Sequence[int],
    splits: dict[str, Any],
    environment: dict[str, Any] | None = None,
    command: str = "python benchmarks/ablation.py",
    reps: int = BOOTSTRAP_REPS,
    tumour: str = "nested",
) -> tuple[dict[str, Any], str]:
    """The JSON document and the markdown text of the study (``tumour``: the phantom family)."""
    budget = shared_budget(runs)
    analysis = analyse(runs, seeds, reps)
    first = runs[next(iter(runs))][seeds[0]]
    seconds = [r["seconds"] for by_seed in runs.values() for r in by_seed.values() if "seconds" in r]
    document = {
        "experiment": "ablation of the loss terms on synthetic phantoms, paired seeds",
        "command": command,
        "design": describe_design(budget, seeds, len(analysis["patients"]), splits, tumour),
        "tumour": tumour,
        "statistic": f"mean over seeds x test patients of the per-patient score; {CONFIDENCE:.0%} two-level "
        f"percentile bootstrap interval ({reps} replicates; seeds and patients resampled with replacement); "
        "contrasts: the same on the paired difference table",
        "scores": SCORES,
        "protocol": first["results"].get("protocol", ""),
        "checkpoint": first["results"].get("checkpoint"),
        "seeds": list(seeds),
        "budget": budget,
        "wall_seconds_per_run_median": statistics.median(seconds) if seconds else None,
        "wall_seconds_total": sum(seconds) if seconds else None,
        "environment": environment or {},
        **analysis,
        "runs": {v: {str(s): r.get("run_dir") for s, r in by_seed.items()} for v, by_seed in runs.items()},
    }
    lines = [
        f"Ablation study (`{command}`): {document['design']}.",
        "",
        f"Per variant: mean over seeds and test patients, [{CONFIDENCE:.0%} bootstrap interval over seeds and "
        "patients]; test accuracy: mean (range) over seeds.",
        "",
        variant_table(analysis),
        "",
        "Paired contrasts (the same seed and patient in both variants; bold: the interval excludes 0):",
        "",
        contrast_table(analysis),
        "",
        "What the intervals establish:",
        "",
        *findings(analysis),
        "",
        "Does the pair beat each modality alone? The combined map (mean of the modality maps) minus each "
        "modality's map, paired over seeds and patients within each variant:",
        "",
        pair_gain_table(analysis),
        "",
        f"Checkpoint: `{document['checkpoint']}` (each modality's network at its best validation accuracy); "
        f"Dice at the threshold chosen on the validation patients; AP: {SCORES['ap']}.",
    ]
    if seconds:
        lines.append(
            f"Wall time on {(environment or {}).get('machine', 'this machine')}: median "
            f"{document['wall_seconds_per_run_median']:.0f} s per run, {sum(seconds) / 60:.0f} min in all."
        )
    return document, "\n".join(lines) + "\n"


def contrast_plot(analysis: dict[str, Any]) -> bytes | None:
    """PNG of the paired differences with their intervals (``None`` without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import io

        import matplotlib.pyplot as plt
    except ImportError:
        return None
    contrasts, channels = analysis["contrasts"], analysis["channels"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.7 * len(contrasts) + 1.8), sharey=True)
    offsets = np.linspace(-0.25, 0.25, len(channels))
    for ax, (score, title) in zip(axes, (("dice", "Δ Dice (3-D)"), ("ap", "Δ AP (threshold-free)"))):
        for k, channel in enumerate(channels):
            estimates = [as_estimate(c["scores"][score][channel]) for c in contrasts]
            y = np.arange(len(contrasts)) + offsets[k]
            mean = np.array([e.mean for e in estimates])
            err = np.array([[e.mean - e.low for e in estimates], [e.high - e.mean for e in estimates]])
            ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3, label=channel)
        ax.axvline(0.0, color="0.4", lw=1)
        ax.set_title(title)
        ax.set_yticks(range(len(contrasts)))
        ax.set_yticklabels([f"{c['a']} − {c['b']}" for c in contrasts])
    axes[0].invert_yaxis()  # the axes share y: once, the first contrast on top
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Paired differences, {CONFIDENCE:.0%} bootstrap intervals over seeds and patients")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def replace_readme_block(path: Path, text: str, markers: tuple[str, str] = (README_BEGIN, README_END)) -> None:
    """Write ``text`` between the ``markers`` (begin, end) of ``path`` (both must be there)."""
    replace_block(path, markers, text)


# ------------------------------------------------------------------------------------------ pilot
def pilot_summary(run_dir: Path) -> dict[str, Any]:
    """From a pilot run's ``metrics.jsonl``: the validation accuracy of each network at each validation, and
    the median of each loss term per network over the logged training steps, with the ER / CMER ratio."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [r for r in records if r["split"] == "val"]
    train_rows = [r for r in records if r["split"] == "train"]
    accuracy_keys = sorted(k for k in val[0] if k.startswith("acc/")) if val else []
    curve = [{"step": r["step"], **{k: r[k] for k in accuracy_keys}} for r in val]
    term_keys = sorted(k for k in train_rows[0] if k.split("/")[0] in ("cls", "kd", "er", "cmer")) if train_rows else []
    medians = {k: statistics.median(r[k] for r in train_rows) for k in term_keys}
    modalities = sorted({k.split("/")[1] for k in term_keys})
    ratios = {m: medians[f"er/{m}"] / medians[f"cmer/{m}"] for m in modalities if medians.get(f"cmer/{m}", 0) > 0}
    return {"validation_accuracy": curve, "term_medians": medians, "er_over_cmer": ratios}


def run_pilot(args: argparse.Namespace, cache: Path) -> int:
    run_dir = args.runs / "pilot"
    ensure_run(train_argv(args, "full", 0, cache, run_dir), run_dir, args.aggregate_only)
    summary = pilot_summary(run_dir)
    lines = [
        f"Pilot of the ablation study: variant full, seed 0, {args.pilot_steps} steps, validation every "
        f"{args.val_every} steps, on the study's data ({cache}).",
        "",
        "| step | " + " | ".join(k for k in summary["validation_accuracy"][0] if k != "step") + " |",
        "|---|" + "---|" * (len(summary["validation_accuracy"][0]) - 1),
    ]
    for row in summary["validation_accuracy"]:
        lines.append(f"| {row['step']} | " + " | ".join(f"{v:.3f}" for k, v in row.items() if k != "step") + " |")
    lines += ["", "Median of each term over the logged training steps:", ""]
    lines += [f"- {k}: {v:.3g}" for k, v in summary["term_medians"].items()]
    lines += ["", "ER / CMER: " + ", ".join(f"{m} {r:.3g}" for m, r in summary["er_over_cmer"].items())]
    write_outputs(args.out, PILOT_NAME, summary, "\n".join(lines) + "\n")
    return 0


def write_outputs(out: Path, name: str, document: dict[str, Any], text: str) -> None:
    """``OUT/<name>.json`` and ``OUT/<name>.md`` (atomically), and the markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.json", json.dumps(document, indent=2, allow_nan=False))
    atomic_write_text(out / f"{name}.md", text)
    print(text)


# ------------------------------------------------------------------------------------------- main
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


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the study (the options that change what is trained)."""
    defaults = parse_args([])
    parts = ["python benchmarks/ablation.py"]
    options = ("seeds", "variants", "subjects", "tumour", "fractions", "steps", "val_every", "cmer_weight", "preset")
    for option in options:
        value = getattr(args, option)
        if value != getattr(defaults, option):
            text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
            parts.append(f"--{option.replace('_', '-')} {text}")
    parts += [f"--set {item}" for item in args.overrides]
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cache = study_cache(args)
    if args.pilot:
        return run_pilot(args, cache)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in args.seeds:  # seed-major: an interrupted study already has every variant of the first seeds
        for variant in args.variants:
            run_dir = run_path(args.runs, variant, seed)
            ensure_run(train_argv(args, variant, seed, cache), run_dir, args.aggregate_only)
            runs.setdefault(variant, {})[seed] = read_run(run_dir)
    runs = {v: runs[v] for v in args.variants}
    splits = json.loads((cache / "splits.json").read_text())
    fold = splits["folds"][0]
    splits["sizes"] = {"train": len(fold["train"]), "val": len(fold["val"]), "test": len(splits["test"])}
    document, text = build_report(runs, args.seeds, splits, environment(), command_line(args), args.reps, args.tumour)
    name, markers = STUDY_OUTPUTS[args.tumour]
    write_outputs(args.out, name, document, text)
    png = contrast_plot(document)
    if png is not None:
        atomic_write(args.out / f"{name}.png", lambda path: path.write_bytes(png))
    if args.readme is not None:
        replace_readme_block(args.readme, text, markers)
    print(f"[ablation] wrote {args.out / name}.{{json,md{',png' if png else ''}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
