#!/usr/bin/env python
"""Does the compact cache change what training learns? Paired runs on the ablation study's phantoms.

The compact cache (the default: uint16 intensities, each subject's in-plane foreground box) stores the
normalised intensities to within half a step of 1/65535 and pads the box back exactly. This script trains
the full method on the same phantoms stored as float32 whole planes (``--dtype float32 --no-crop``, the
cache before format 3), with the study's budget and seeds, and compares each seed with the study's run of
the same seed on the compact cache::

    python benchmarks/ablation.py --variants full          # the compact-cache runs (part of the study)
    python benchmarks/cache_training.py                    # the float32 runs and the comparison

Same seed = same initialisation, batch order and π (tests/training/test_paired_seeds.py); the only
difference between a pair is the storage of the input. Outputs ``OUT/cache_training.{json,md}``: per-seed
values, the paired difference compact − float32 of the test Dice and AP per channel with its 95 %
bootstrap interval over seeds and patients (ablation_stats), and the bytes of both caches.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ablation
from ablation_stats import paired_contrast

NAME = "cache_training"


def float32_cache(args, compact: Path) -> Path:
    """The study's phantoms prepared as float32 whole planes, with the same patient split."""
    from mmcam.data.build import BuildOptions, prepare_raw
    from mmcam.data.cache import INDEX_FILE, SPLITS_FILE

    cache = args.runs / "data-float32" / "cache"
    if not ((cache / INDEX_FILE).is_file() and (cache / SPLITS_FILE).is_file()):
        options = BuildOptions(image_dtype="float32", crop_to_foreground=False)
        prepare_raw(compact.parent / "raw", cache, dataset="brats", options=options, fractions=args.fractions, seed=0)
    if json.loads((cache / SPLITS_FILE).read_text())["test"] != json.loads((compact / SPLITS_FILE).read_text())["test"]:
        raise SystemExit(f"error: {cache} and {compact} hold different test patients")
    return cache


def cache_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "subjects").rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    args = ablation.parse_args(list(argv or []) + ["--variants", "full"])
    compact = ablation.study_cache(args)
    dense = float32_cache(args, compact)
    runs: dict[str, dict[int, dict[str, Any]]] = {"compact": {}, "float32": {}}
    for seed in args.seeds:
        for storage, cache in (("compact", compact), ("float32", dense)):
            name = "full" if storage == "compact" else "full-float32"
            run_dir = ablation.run_path(args.runs, name, seed)
            ablation.ensure_run(ablation.train_argv(args, "full", seed, cache, run_dir), run_dir, args.aggregate_only)
            runs[storage][seed] = ablation.read_run(run_dir)
    channels, patients, tables = ablation.study_tables(runs, args.seeds)
    contrasts = {
        score: {
            c: paired_contrast(tables["compact"][score][c], tables["float32"][score][c], args.reps).as_dict()
            for c in channels
        }
        for score in ablation.SCORES
    }
    per_seed = {
        storage: {
            score: {c: tables[storage][score][c].mean(axis=1).tolist() for c in channels} for score in ablation.SCORES
        }
        for storage in runs
    }
    sizes = {"compact": cache_bytes(compact), "float32": cache_bytes(dense)}
    document = {
        "experiment": "full method trained on the compact (uint16, foreground box) vs the float32 whole-plane cache",
        "seeds": args.seeds,
        "patients": patients,
        "cache_bytes": sizes,
        "per_seed_mean": per_seed,
        "compact_minus_float32": contrasts,
        "runs": {s: {str(k): r["run_dir"] for k, r in by_seed.items()} for s, by_seed in runs.items()},
    }
    lines = [
        f"Full method, the ablation study's budget and seeds {', '.join(map(str, args.seeds))}, trained on the "
        f"compact cache ({sizes['compact'] / 2**20:.1f} MiB) and on the float32 whole-plane cache "
        f"({sizes['float32'] / 2**20:.1f} MiB) of the same {len(patients)} test patients' phantoms "
        "(`python benchmarks/cache_training.py`).",
        "",
        "| score | channel | compact, per seed | float32, per seed | compact − float32 [95 % interval] |",
        "|---|---|---|---|---|",
    ]
    for score in ablation.SCORES:
        for c in channels:
            estimate = ablation.as_estimate(contrasts[score][c])
            cells = [" / ".join(f"{v:.3f}" for v in per_seed[s][score][c]) for s in ("compact", "float32")]
            lines.append(f"| {score} | {c} | {cells[0]} | {cells[1]} | {estimate.format(signed=True)} |")
    ablation.write_outputs(args.out, NAME, document, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
