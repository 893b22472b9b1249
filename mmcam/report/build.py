"""Assemble the report of a run directory: select slices, draw panels and figures, write the page.

Output folder (default ``RUN_DIR/report``)::

    index.html                         the page (inline CSS, relative links to the files below)
    report.json                        what was drawn: run, split, checkpoint, thresholds, every PNG
    slices/<entry>/<subject>_z<k>_{image,cam,mask}.png
                                       exact panels (see mmcam.report.overlays), one per slice and kind
    figures/overlays_<entry>.png       stand-alone figure of an entry (titles, legend)
    figures/curves_training.png        training loss and loss terms against the step
    figures/curves_validation.png      validation accuracy and Dice against the step
    eval/                              copies of RUN_DIR/eval/*_summary.json and *_cases.csv, if any

``<entry>`` is a modality or ``combined`` (the mean of the modalities' maps, drawn over the first
modality's image). The folder is built under a temporary name and then renamed into place, so a reader
never sees a half-written report; an existing folder is replaced only if it holds a previous report.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcam.atomic_files import atomic_write_json, replace_directory, temporary_sibling
from mmcam.cams.pseudo_masks import threshold_maps
from mmcam.objective import TERMS
from mmcam.report import html as H
from mmcam.report.figures import curves_figure, heat_lut, overlay_figure, require_matplotlib, write_png
from mmcam.report.overlays import PANEL_KINDS, display_scale, slice_dice, slice_panels
from mmcam.report.run_outputs import ReportError, RunOutputs, checkpoint_path, evaluation_thresholds, read_run
from mmcam.report.slices import SliceMaps, compute_maps, load_model, open_dataset, select_slices

__all__ = ["write_report", "MARKER_FILE", "COMBINED"]

MARKER_FILE = "report.json"
COMBINED = "combined"
PANEL_TITLES = {"image": "image + ground truth", "cam": "CAM heat map", "mask": "pseudo-mask"}
TERM_LABELS = {"cls": "L_C", "kd": "L_KD", "er": "L_ER", "cmer": "L_CMER"}


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)) or "_"


def _resolve_cache(run: RunOutputs, data: str | None) -> Path:
    """The slice cache of the run (``--data`` overrides the one in config.yaml). The synthetic phantoms
    are regenerated when missing (seeded, seconds); a real dataset's cache must exist (the report never
    prepares a raw download)."""
    from mmcam.data import DataError
    from mmcam.data.cache import INDEX_FILE
    from mmcam.training import config as cfg
    from mmcam.training.cache_location import cache_location, resolve_cache

    try:
        config = cfg.apply(cfg.TrainConfig(), run.config, f"{run.path / 'config.yaml'}")
        if data is not None:
            config = cfg.apply(config, {"data": str(data), "cache": None}, "--data")
        if config.data is None:
            return resolve_cache(config, log=lambda message: print(f"[report] {message}", file=sys.stderr))
    except (cfg.ConfigError, DataError) as exc:
        raise ReportError(f"cannot find the data of {run.path}: {exc} (pass --data CACHE)") from None
    cache = cache_location(config)
    if not (cache / INDEX_FILE).is_file():
        raise ReportError(f"no slice cache at {cache} (the data of {run.path / 'config.yaml'}); pass --data CACHE")
    return cache


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER_FILE).is_file())):
        raise ReportError(
            f"--out {out} exists and is not a previous report (no {MARKER_FILE}); choose a new or empty folder"
        )


# ---------------------------------------------------------------------------------------- slices
def _entry_values(entry: str, m: int | None, maps: SliceMaps) -> tuple[np.ndarray, np.ndarray]:
    """Background image and map of one entry (a modality index ``m``, or the combined map)."""
    if m is None:
        return maps.image[0], maps.combined
    return maps.image[m], maps.maps[m]


def _draw_entry(
    folder: Path,
    entry: str,
    m: int | None,
    all_maps: list[SliceMaps],
    threshold: float,
    lut: np.ndarray,
    modalities: list[str],
) -> dict[str, Any]:
    """The panels and the stand-alone figure of one entry; returns its part of report.json."""
    rows, records = [], []
    directory = folder / "slices" / _safe_name(entry)
    directory.mkdir(parents=True, exist_ok=True)
    for maps in all_maps:
        image, values = _entry_values(entry, m, maps)
        pseudo = threshold_maps(torch.from_numpy(values), threshold).numpy()
        scale = display_scale(values.shape)
        panels = slice_panels(image, maps.mask, values, pseudo, lut, scale)
        where = maps.where
        stem = f"{_safe_name(where.subject)}_z{where.slice:03d}"
        files = {}
        for kind in PANEL_KINDS:
            path = write_png(directory / f"{stem}_{kind}.png", panels[kind])
            files[kind] = path.relative_to(folder).as_posix()
        predicted = "target" if (m is None or maps.pred[m] == 1) else "no target"
        dice = slice_dice(pseudo, maps.mask)
        records.append(
            {
                "subject": where.subject,
                "slice": where.slice,
                "dataset_index": where.index,
                "lesion_pixels": where.area,
                "scale": scale,
                "size": list(panels["image"].shape[:2]),
                "files": files,
                "slice_dice": dice,
                "predicted": predicted if m is not None else None,
                "pseudo_mask_pixels": int(pseudo.sum()),
            }
        )
        rows.append((f"{where.subject} z={where.slice}\nslice Dice {dice:.2f}", [panels[k] for k in PANEL_KINDS]))
    background = modalities[0] if m is None else entry
    figure_path = folder / "figures" / f"overlays_{_safe_name(entry)}.png"
    title = (
        f"{entry}: CAM and pseudo-mask (threshold {threshold:g}) over the {background} image"
        if m is None
        else f"{entry}: CAM and pseudo-mask (threshold {threshold:g})"
    )
    overlay_figure(
        figure_path,
        title,
        rows,
        [PANEL_TITLES[k] for k in PANEL_KINDS],
        legend="heat map: mn(relu(CAM)) in [0, 1], inferno colour map",
    )
    return {
        "threshold": threshold,
        "background": background,
        "figure": figure_path.relative_to(folder).as_posix(),
        "slices": records,
    }


def _slices_section(drawn: dict[str, dict], modalities: list[str], split: str, threshold_note: str) -> str:
    parts = [
        H.paragraph(
            f"Each row: one slice of the {split} split (the largest lesion of each of the first patients). "
            "Green: ground-truth contour (inner boundary of the mask). Heat map: the normalised foreground CAM "
            "mn(relu(CAM)), zero where the network predicts no target (inferno colour map, 0 black, 1 yellow). "
            f"Red: the pseudo-mask, map >= threshold ({threshold_note}). Slices are shown in the stored grid "
            "of the cache (rows = first voxel axis); each pixel is enlarged to a block.",
            "note",
        )
    ]
    for entry, info in drawn.items():
        body = [
            H.paragraph(
                f"threshold {info['threshold']:g}; background: {info['background']} image; "
                f"stand-alone figure: {info['figure']}",
                "note",
            )
        ]
        for record in info["slices"]:
            caption = f"{record['subject']} slice {record['slice']}: {record['lesion_pixels']} lesion pixels"
            if record["predicted"] is not None:
                caption += f", network predicts {record['predicted']}"
            caption += f", slice Dice {record['slice_dice']:.3f}"
            height, width = record["size"]
            cells = [
                H.figure(record["files"][kind], PANEL_TITLES[kind], css_class="panel", width=width, height=height)
                for kind in PANEL_KINDS
            ]
            body.append(f"<div>{''.join(cells)}<p class=note>{H.escape(caption)}</p></div>")
        body.append(H.figure(info["figure"], f"{entry}: stand-alone figure"))
        title = f"{entry} (mean of {', '.join(modalities)})" if entry == COMBINED else entry
        parts.append(H.section(title, "".join(body), level=3, anchor=f"slices-{_safe_name(entry)}"))
    return H.section("Slices", "".join(parts), anchor="slices")


# --------------------------------------------------------------------------------------- metrics
def _metrics_section(run: RunOutputs, copied: list[dict]) -> str:
    results = run.results
    accuracy = results.get("test_accuracy", {})
    rows = []
    for name, entry in results["dice"].items():
        patients = entry.get("per_patient", {})
        rows.append(
            (
                name,
                entry["threshold"],
                {"mean": entry["mean"], "std": entry["std"]},
                len(patients),
                accuracy.get(name, ""),
            )
        )
    body = [
        H.table(
            [
                "entry",
                "threshold (validation)",
                "test Dice (mean ± std over patients)",
                "patients",
                "test slice accuracy",
            ],
            rows,
        ),
        H.paragraph(
            f"Protocol (results.json, checkpoint {results.get('checkpoint', '?')}): "
            f"{results.get('protocol', 'not stated')}",
            "note",
        ),
    ]
    per_patient = {name: entry.get("per_patient", {}) for name, entry in results["dice"].items()}
    subjects = sorted({s for values in per_patient.values() for s in values})
    if subjects:
        body.append(
            "<details><summary>per-patient test Dice</summary>"
            + H.table(
                ["patient", *per_patient], [(s, *[per_patient[n].get(s, "") for n in per_patient]) for s in subjects]
            )
            + "</details>"
        )
    for record in copied:
        evaluation = record["evaluation"]
        part = [H.evaluation_summary(evaluation.summary, evaluation.known_format)]
        for name in record["files"][1:]:
            cases, n = H.csv_table(record["folder"] / name)
            part.append(f"<details><summary>per-case rows of {H.escape(name)} ({n})</summary>{cases}</details>")
        links = " · ".join(H.link(name, name) for name in record["files"])
        part.append(f"<p class=note>files: {links}</p>")
        body.append(H.section(f"evaluation: {evaluation.name}", "".join(part), level=3))
    if not copied:
        body.append(
            H.paragraph(
                "No evaluation summaries (RUN_DIR/eval/*_summary.json); "
                "python -m mmcam.evaluate --run RUN_DIR writes them.",
                "note",
            )
        )
    return H.section("Metrics", "".join(body), anchor="metrics")


def _copy_evaluations(run: RunOutputs, folder: Path) -> list[dict]:
    """Copy the evaluation files into ``folder/eval`` (so the report folder stands alone)."""
    out = []
    if run.evaluations:
        (folder / "eval").mkdir()
    for evaluation in run.evaluations:
        files = []
        for source in [evaluation.summary_file, *evaluation.cases_files]:
            shutil.copyfile(source, folder / "eval" / source.name)
            files.append(f"eval/{source.name}")
        out.append({"evaluation": evaluation, "files": files, "folder": folder})
    return out


# ---------------------------------------------------------------------------------------- curves
def _draw_curves(run: RunOutputs, folder: Path, modalities: list[str]) -> dict[str, str]:
    curves, config = run.curves, run.config
    train_loss = {"total (sum over networks)": curves.get(("train", "loss"), [])}
    train_loss.update(
        {f"network {m}": curves[("train", f"loss/{m}")] for m in modalities if ("train", f"loss/{m}") in curves}
    )
    terms = {
        f"{TERM_LABELS[t]} {m}": curves[("train", f"{t}/{m}")]
        for t in TERMS
        for m in modalities
        if config.get(f"use_{t}", True) and ("train", f"{t}/{m}") in curves
    }
    accuracy = {m: curves[("val", f"acc/{m}")] for m in modalities if ("val", f"acc/{m}") in curves}
    dice = {n: curves[("val", f"dice/{n}")] for n in [*modalities, COMBINED] if ("val", f"dice/{n}") in curves}
    training = folder / "figures" / "curves_training.png"
    validation = folder / "figures" / "curves_validation.png"
    curves_figure(
        training,
        f"training ({run.path.name})",
        [("loss", "loss", train_loss), ("loss terms (enabled)", "term value", terms)],
        log_scale=[False, True],
    )
    curves_figure(
        validation,
        f"validation ({run.path.name})",
        [
            ("slice classification accuracy", "accuracy", accuracy),
            ("patient Dice at the best validation threshold", "Dice", dice),
        ],
    )
    return {
        name: path.relative_to(folder).as_posix() for name, path in (("training", training), ("validation", validation))
    }


def _curves_section(files: dict[str, str], has_metrics: bool) -> str:
    note = (
        "From metrics.csv: training scalars every log_every steps; validation at each epoch end. The "
        "validation Dice uses, at each evaluation, the threshold that is best on the validation split."
    )
    if not has_metrics:
        note = "The run has no metrics.csv: the plots are empty."
    body = (
        H.paragraph(note, "note")
        + H.figure(files["training"], "training curves")
        + H.figure(files["validation"], "validation curves")
    )
    return H.section("Training curves", body, anchor="curves")


# ------------------------------------------------------------------------------------------- api
def _thresholds(run: RunOutputs, split: str, checkpoint_file: Path) -> tuple[dict[str, float], str]:
    """The pseudo-mask threshold of every entry and where it comes from: the evaluation of this split
    (``eval/<split>_summary.json``, threshold chosen on validation, same checkpoint) when there is one,
    else ``results.json`` of the training run (also chosen on validation)."""
    found = evaluation_thresholds(run.evaluations, split, checkpoint_file.stem, run.names)
    if found is not None:
        thresholds, evaluation = found
        return thresholds, (
            f"chosen on the validation split, from {evaluation.summary_file.parent.name}/{evaluation.summary_file.name}"
        )
    note = "chosen on the validation split by the training run, results.json"
    used = str(run.results.get("checkpoint", ""))
    if used and Path(used).stem != checkpoint_file.stem:
        note += f"; note: chosen for {used}, applied here to {checkpoint_file.name}"
    return run.thresholds(), note


def _run_section(run: RunOutputs, split: str, checkpoint: Path, modalities: list[str]) -> str:
    config, versions = run.config, run.environment.get("versions", {})
    switches = ", ".join(f"{k}={config.get(k)}" for k in ("use_cls", "use_kd", "use_er", "use_cmer"))
    items = [
        ("run directory", str(run.path)),
        ("modalities", ", ".join(modalities)),
        ("data", config.get("data") or f"synthetic {config.get('synthetic_layout')} phantoms"),
        ("preset", config.get("preset")),
        ("epochs / batch / lr", f"{config.get('epochs')} / {config.get('batch_size')} / {config.get('lr')}"),
        ("seed", config.get("seed")),
        ("loss terms", switches),
        ("slices drawn with", checkpoint.name),
        ("split shown", split),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v)),
    ]
    return H.section("Run", H.definition_list(items), anchor="run")


def write_report(
    run_dir, out=None, *, split: str = "test", slices: int = 4, checkpoint: str | None = None, data: str | None = None
) -> Path:
    """Write the report of a finished run directory; returns the path of ``index.html``.

    Args:
        run_dir: a run directory of ``python -m mmcam.train`` with ``results.json``.
        out: output folder (default ``RUN_DIR/report``); replaced if it holds a previous report.
        split: the split whose slices are shown (``test``, ``val``, ``train``).
        slices: how many slices per entry (see :func:`mmcam.report.slices.select_slices`).
        checkpoint: ``best_dice``, ``best``, ``last`` or a path; default: the one of ``results.json``.
        data: the slice cache (default: the run's ``data``, or the synthetic phantoms it trained on).

    Raises:
        ReportError: matplotlib missing, an incomplete run directory, a missing checkpoint or cache,
            or an ``out`` folder that is not a report.
    """
    require_matplotlib()
    run = read_run(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    _check_out(out)
    checkpoint_file = checkpoint_path(run.path, checkpoint, run.results)
    model, modalities = load_model(checkpoint_file)
    missing = [m for m in modalities if m not in run.results["dice"]]
    if missing:
        raise ReportError(f"{run.path / 'results.json'} has no threshold for {missing} of {checkpoint_file.name}")
    thresholds, threshold_note = _thresholds(run, split, checkpoint_file)
    dataset = open_dataset(_resolve_cache(run, data), split, modalities, run.config.get("region"))
    chosen = select_slices(dataset, slices)
    if not chosen:
        raise ReportError(f"split {split!r} has no slice with a ground-truth lesion to show")
    all_maps = compute_maps(model, dataset, chosen)

    out.parent.mkdir(parents=True, exist_ok=True)
    folder = temporary_sibling(out)
    folder.mkdir()
    try:
        lut = heat_lut()
        entries = [(m, i) for i, m in enumerate(modalities)] + [(COMBINED, None)]
        drawn = {
            entry: _draw_entry(folder, entry, m, all_maps, thresholds[entry], lut, modalities)
            for entry, m in entries
            if entry in thresholds
        }
        curves = _draw_curves(run, folder, modalities)
        copied = _copy_evaluations(run, folder)
        title = f"mmcam report: {run.path.name}"
        body = [
            _run_section(run, split, checkpoint_file, modalities),
            _metrics_section(run, copied),
            _curves_section(curves, bool(run.curves)),
            _slices_section(drawn, modalities, split, threshold_note),
            H.paragraph(f"Written by python -m mmcam.report at {time.strftime('%Y-%m-%d %H:%M:%S')}.", "note"),
        ]
        (folder / "index.html").write_text(H.page(title, body), encoding="utf-8")
        atomic_write_json(
            folder / MARKER_FILE,
            {
                "run_dir": str(run.path),
                "split": split,
                "checkpoint": checkpoint_file.name,
                "thresholds": {e: thresholds[e] for e in drawn},
                "threshold_source": threshold_note,
                "entries": drawn,
                "curves": curves,
                "evaluations": [name for e in copied for name in e["files"]],
            },
        )
        replace_directory(folder, out)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return out / "index.html"
