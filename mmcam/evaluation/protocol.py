"""The evaluation protocol of docs/evaluation.md, stated in its outputs: what ``python -m mmcam.evaluate``
runs, and what training reports as its test results (``results.json``).

::

    python -m mmcam.evaluate --run RUN_DIR [--split test] [--threshold val|otsu|T] [--maps cam,gradcam,gradcampp]
                             [--oracle] [--checkpoint best|best_dice|last] [--data CACHE] [--device cpu|cuda]

Protocol, per map type (``cam``: the CAM of each modality's network; ``gradcam`` / ``gradcampp``: Grad-CAM /
Grad-CAM++ at its backbone layer, :mod:`mmcam.cams.gradcam`) and channel (each modality's network on its own
modality, and ``combined`` = the mean of the modality maps):

1. maps of every stored slice of a patient, min-max normalised per slice and zeroed where the network
   predicts "no target" (:mod:`mmcam.cams.pseudo_masks`), restacked to the patient's original voxel grid (the
   prepare-time crop / resize undone, dropped empty slices = 0; :mod:`mmcam.evaluation.runs`);
2. pseudo-mask = map >= threshold, the threshold chosen without the evaluated split's labels
   (:mod:`mmcam.evaluation.thresholds`: on the validation split by default, or label-free Otsu / fixed). ``--oracle``
   sweeps it on the evaluated split's labels instead: every output then says ORACLE;
3. per patient: 3-D Dice, HD95 and ASSD in mm (voxel spacing of the NIfTI header) and the mean per-slice 2-D
   Dice (:mod:`mmcam.evaluation.surface_metrics`, which also states the empty-mask convention); mean ± std over the
   patients (population std);
4. per patient, threshold-free: the average precision of each channel's map (not zeroed by the classifier)
   on the slices that hold target (:mod:`mmcam.evaluation.ranking`).

Outputs in ``RUN_DIR/eval/`` (``<name>`` = the split, e.g. ``test``; for a threshold other than ``val`` it
carries the rule too: ``test_otsu``, ``test_fixed0.5``, ``test_oracle``), written atomically:

- ``<name>_<map>_cases.csv``: one row per patient: ``subject``, ``threshold_mode``, ``spacing_mm``
  (``sx x sy x sz``), ``truth_voxels``, then for each channel ``c``: ``c_threshold``, ``c_dice``,
  ``c_hd95_mm``, ``c_assd_mm`` (``nan`` = undefined, see the empty-mask convention), ``c_dice_2d``,
  ``c_predicted_voxels``;
- ``<name>_summary.json``: ``{"format": "mmcam-evaluation", "version": 1, "oracle": bool, "warning":
  str|null, "protocol": {split, n_subjects, subjects, checkpoint, checkpoint_file, departure (null, or why
  the checkpoint departs from the paper's selection), threshold: {mode,
  value, description, selected_on}, pseudo_mask, combined, grid, region, metrics, empty_masks, aggregation},
  "run_dir", "output_dir", "summary_file" (this file's name), "cache", "modalities", "channels", "maps":
  {<map>: {"cases_csv": file name, "channels":
  {<channel>: {"threshold": float or "per patient", "selection_dice": float (val / oracle: the mean Dice
  at the chosen threshold on the split it was chosen on), "dice" | "hd95_mm" | "assd_mm" | "dice_2d" | "ap":
  {"mean", "std", "n", "n_undefined"}, "per_patient_dice": {subject: 3-D Dice}, "per_patient_ap": {subject:
  AP}}}}}}`` (``null`` for a mean
  or std over no defined value);

and a plain-text table (:func:`format_table`). Bad input (no run directory, unknown checkpoint or map
type, a split without labels) raises :class:`~mmcam.evaluation.runs.UsageError` naming it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmcam.atomic_files import atomic_write_text
from mmcam.data import DataError, SliceDataset
from mmcam.evaluation.overlap import patient_statistics
from mmcam.evaluation.ranking import AP_DEFINITION, positive_slice_ap
from mmcam.evaluation.runs import (
    LoadedRun,
    UsageError,
    check_map_types,
    labelled_split,
    load_run,
    patient_volumes,
)
from mmcam.evaluation.surface_metrics import EMPTY_MASK_CONVENTION, METRIC_DEFINITIONS, case_metrics
from mmcam.evaluation.thresholds import ORACLE_WARNING, ThresholdRule, choose_on_split, parse_threshold, pseudo_mask

__all__ = ["SUMMARY_FORMAT", "METRICS", "SCORES", "evaluate_run", "format_table"]

SUMMARY_FORMAT = "mmcam-evaluation"
#: The per-patient metrics of every channel's pseudo-mask, as named in the CSV (``<channel>_<metric>``) and
#: summary.
METRICS = ("dice", "hd95_mm", "assd_mm", "dice_2d")
#: The threshold-free score of every channel's map (:mod:`mmcam.evaluation.ranking`), named likewise.
SCORES = ("ap",)
PSEUDO_MASK_RULE = (
    "map of the foreground class (CAM channel 1, or Grad-CAM / Grad-CAM++ of class 1 at the "
    "backbone layer), relu, min-max normalised per slice, zeroed on slices where the network "
    "predicts 'no target', thresholded: mask = map >= threshold"
)
COMBINED_RULE = "combined: the mean of the modality maps, thresholded with its own threshold like a modality"
GRID_RULE = (
    "metrics on the patient's original NIfTI voxel grid: stored slices restacked with the prepare-time "
    "crop / pad / resize undone, slices dropped as empty set to 0"
)


# ------------------------------------------------------------------------------------------ data
def _resolve_cache(run: LoadedRun, data: str | None) -> Path:
    if data is not None:
        return Path(data)
    from mmcam.training.cache_location import resolve_cache

    try:
        return resolve_cache(run.config, lambda message: print(message, file=sys.stderr))
    except DataError as exc:
        raise UsageError(
            f"the run's data ({run.config.data or 'synthetic phantoms'}): {exc}; pass --data CACHE"
        ) from None


# --------------------------------------------------------------------------------------- numbers
def _json_safe(value: Any) -> Any:
    """nan / inf -> None (strict JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _case_columns(channels: Sequence[str]) -> list[str]:
    per_channel = ["threshold", *METRICS, "predicted_voxels", *SCORES]
    return ["subject", "threshold_mode", "spacing_mm", "truth_voxels"] + [
        f"{c}_{name}" for c in channels for name in per_channel
    ]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


# ------------------------------------------------------------------------------------ evaluation
def _evaluate_map(
    run: LoadedRun, dataset: SliceDataset, map_type: str, rule: ThresholdRule, chosen: dict | None, batch_size: int
) -> tuple[list[dict], dict]:
    """Per-patient rows of the CSV and per-channel statistics of one map type."""
    rows: list[dict] = []
    values: dict[str, dict[str, list[float]]] = {c: {m: [] for m in METRICS + SCORES} for c in run.channels}
    for subject, maps, volumes, truth in patient_volumes(run, dataset, map_type, batch_size):
        zooms = maps.meta.zooms
        row = {
            "subject": subject,
            "threshold_mode": rule.mode,
            "spacing_mm": "x".join(f"{z:g}" for z in zooms),
            "truth_voxels": int(truth.sum()),
        }
        for c in run.channels:
            volume = volumes[c]
            t = rule.threshold_for(volume, chosen[c] if chosen else None)
            metrics = case_metrics(pseudo_mask(volume, t), truth, zooms)
            row[f"{c}_threshold"] = t
            row[f"{c}_predicted_voxels"] = metrics.predicted_voxels
            for m in METRICS:
                value = getattr(metrics, m)
                row[f"{c}_{m}"] = value
                values[c][m].append(value)
            ap = positive_slice_ap(maps.volume(c, gated=False), truth)
            row[f"{c}_ap"] = ap
            values[c]["ap"].append(ap)
        rows.append(row)
    return rows, {c: {m: patient_statistics(v) for m, v in per_metric.items()} for c, per_metric in values.items()}


def evaluate_run(
    run_dir: str | os.PathLike[str],
    *,
    split: str = "test",
    threshold: str | None = None,
    maps: Sequence[str] = ("cam",),
    oracle: bool = False,
    checkpoint: str | None = None,
    data: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    out: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the protocol of the module doc and write its files; returns the summary (as written).

    Args:
        run_dir: the run directory.
        split: the split to evaluate (must have labels).
        threshold: ``None`` / ``"val"``, ``"otsu"`` or a number as text
            (:func:`mmcam.evaluation.thresholds.parse_threshold`).
        maps: map types among :data:`~mmcam.cams.pseudo_masks.MAP_TYPES`.
        oracle: sweep the threshold on ``split``'s labels (flagged); excludes ``threshold``.
        checkpoint: ``best``, ``best_dice``, ``last`` or ``None`` (:func:`mmcam.evaluation.runs.load_run`).
        data: the cache (default: the run's).
        out: output folder (default ``RUN_DIR/eval``).

    Raises:
        UsageError: bad input, naming the option or file.
    """
    if oracle and threshold is not None:
        raise UsageError(
            f"--oracle sweeps the threshold on the {split} labels; it cannot be combined with --threshold {threshold}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {batch_size!r}")
    rule = ThresholdRule("oracle") if oracle else parse_threshold(threshold)
    map_types = check_map_types(maps)
    run = load_run(run_dir, checkpoint, device)
    cache = _resolve_cache(run, data)
    dataset = labelled_split(run, cache, split)
    out = Path(out) if out is not None else run.run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    name = f"{split}_{rule.tag}" if rule.tag else split
    if rule.oracle:
        log(f"warning: {ORACLE_WARNING}")

    results: dict[str, dict[str, Any]] = {}
    selected_on: str | None = None
    for map_type in map_types:
        log(f"evaluating {map_type} on {len(dataset.subject_ids)} {split} patients ({run.checkpoint} checkpoint)")
        chosen = selection_dice = None
        if rule.mode in ("val", "oracle"):
            selected_on = split if rule.oracle else "val"
            option = "--split" if rule.oracle else "--threshold val: the validation split"
            chosen, selection_dice = choose_on_split(run, cache, selected_on, map_type, batch_size, option)
        rows, statistics = _evaluate_map(run, dataset, map_type, rule, chosen, batch_size)
        cases_file = f"{name}_{map_type}_cases.csv"
        _write_csv(out / cases_file, _case_columns(run.channels), rows)
        channels = {}
        for c in run.channels:
            entry = {"threshold": chosen[c] if chosen else (rule.value if rule.mode == "fixed" else "per patient")}
            if selection_dice is not None:
                entry["selection_dice"] = selection_dice[c]
            per_patient = {f"per_patient_{m}": {r["subject"]: r[f"{c}_{m}"] for r in rows} for m in ("dice", "ap")}
            channels[c] = {**entry, **statistics[c], **per_patient}
        results[map_type] = {"cases_csv": cases_file, "channels": channels}

    if run.selection_note:
        log(f"warning: {run.selection_note}")
    warning = ORACLE_WARNING if rule.oracle else None
    if rule.mode == "val" and split == "val":
        warning = "the threshold was chosen on the evaluated (validation) split itself: optimistic figures"
        log(f"warning: {warning}")
    summary = {
        "format": SUMMARY_FORMAT,
        "version": 1,
        "oracle": rule.oracle,
        "warning": warning,
        "protocol": {
            "split": split,
            "n_subjects": len(dataset.subject_ids),
            "subjects": list(dataset.subject_ids),
            "checkpoint": run.checkpoint,
            "checkpoint_file": str(run.checkpoint_path),
            "departure": run.selection_note,
            "threshold": {
                "mode": rule.mode,
                "value": rule.value,
                "description": rule.describe(split),
                "selected_on": selected_on,
            },
            "pseudo_mask": PSEUDO_MASK_RULE,
            "combined": COMBINED_RULE,
            "grid": GRID_RULE,
            "region": dataset.region,
            "metrics": {**METRIC_DEFINITIONS, "ap": AP_DEFINITION},
            "empty_masks": EMPTY_MASK_CONVENTION,
            "aggregation": "mean and population std over the patients; HD95, ASSD and AP over the patients where "
            "they are defined (n), the others counted in n_undefined",
        },
        "run_dir": str(run.run_dir),
        "output_dir": str(out),
        "summary_file": f"{name}_summary.json",
        "cache": str(cache),
        "modalities": list(run.modalities),
        "channels": run.channels,
        "maps": results,
    }
    summary = _json_safe(summary)
    atomic_write_text(out / f"{name}_summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    log(format_table(summary))
    log(f"wrote {out / f'{name}_summary.json'} and {', '.join(r['cases_csv'] for r in results.values())}")
    return summary


def _cell(stats: dict, digits: int) -> str:
    text = "n/a" if stats["mean"] is None else f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return text + (f" ({stats['n_undefined']} undefined)" if stats.get("n_undefined") else "")


def format_table(summary: dict) -> str:
    """A plain-text table of a summary: one line per map type and channel."""
    protocol = summary["protocol"]
    head = (
        f"{protocol['split']} split, {protocol['n_subjects']} patients, checkpoint {protocol['checkpoint']}, "
        f"threshold {protocol['threshold']['mode']}: {protocol['threshold']['description']}"
    )
    if protocol.get("departure"):
        head += f"\n*** {protocol['departure']} ***"
    columns = ["map", "channel", "threshold", "Dice (3-D)", "HD95 mm", "ASSD mm", "Dice (2-D)", "AP"]
    lines = []
    for map_type, result in summary["maps"].items():
        for channel, r in result["channels"].items():
            t = r["threshold"]
            lines.append(
                [
                    map_type,
                    channel,
                    f"{t:.2f}" if isinstance(t, (int, float)) else str(t),
                    _cell(r["dice"], 3),
                    _cell(r["hd95_mm"], 1),
                    _cell(r["assd_mm"], 2),
                    _cell(r["dice_2d"], 3),
                    _cell(r["ap"], 3) if "ap" in r else "n/a",
                ]
            )
    widths = [max(len(str(row[i])) for row in [columns] + lines) for i in range(len(columns))]
    text = [head] + (["*** " + summary["warning"] + " ***"] if summary.get("warning") else [])
    text += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [columns] + lines]
    return "\n".join(text)
