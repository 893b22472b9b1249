"""What a finished training run directory holds, read for the report (see :mod:`mmcam.training.run_dir`).

Required: ``config.yaml``, ``results.json`` (written when training and its test evaluation finished) and
the checkpoint the slices are drawn with. Optional: ``metrics.csv`` (training curves),
``environment.json``, and the evaluation files of ``python -m mmcam.evaluate`` in ``RUN_DIR/eval/``:
``<name>_summary.json`` and its per-case CSV files (``maps.<map>.cases_csv`` of a summary in the
``mmcam-evaluation`` format; for any other summary, ``<name>_cases.csv`` when it exists).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ReportError", "Evaluation", "RunOutputs", "read_run", "read_curves", "read_evaluations", "checkpoint_path"]

EVAL_FOLDER = "eval"
SUMMARY_SUFFIX = "_summary.json"
CASES_SUFFIX = "_cases.csv"
#: The ``format`` field of the summaries written by ``python -m mmcam.evaluate``.
EVALUATION_FORMAT = "mmcam-evaluation"


class ReportError(RuntimeError):
    """The run directory (or an option of the report) cannot give a report; the message says why."""


@dataclass
class Evaluation:
    """One ``RUN_DIR/eval/<name>_summary.json`` and its per-case CSV files (those that exist)."""

    name: str
    summary_file: Path
    summary: dict
    cases_files: list

    @property
    def known_format(self) -> bool:
        """Whether the summary is in the format of ``python -m mmcam.evaluate`` (with a ``maps`` table)."""
        return self.summary.get("format") == EVALUATION_FORMAT and isinstance(self.summary.get("maps"), dict)


@dataclass
class RunOutputs:
    """The parts of a run directory the report shows.

    Attributes:
        path: the run directory.
        config: the resolved training config (``config.yaml``).
        results: ``results.json``: test Dice per modality and ``"combined"`` with the threshold chosen on
            validation, the protocol text and the checkpoint it was computed with.
        environment: ``environment.json`` (``{}`` when absent).
        curves: ``{(split, name): [(step, value), ...]}`` from ``metrics.csv`` (``{}`` when absent).
        evaluations: the evaluation summaries of ``RUN_DIR/eval`` (sorted by name).
    """

    path: Path
    config: dict
    results: dict
    environment: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    evaluations: list = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The entries of the Dice table: each modality, then ``"combined"``."""
        return list(self.results["dice"])

    def thresholds(self) -> dict[str, float]:
        """The pseudo-mask threshold of each entry, as chosen on the validation split by the training run."""
        return {name: float(entry["threshold"]) for name, entry in self.results["dice"].items()}


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"cannot read {what} {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{what} {path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{what} {path} must hold a JSON object, got {type(value).__name__}")
    return value


def _check_results(results: dict, path: Path) -> None:
    dice = results.get("dice")
    if not isinstance(dice, dict) or not dice:
        raise ReportError(f"{path} has no 'dice' table (is it a results.json of python -m mmcam.train?)")
    for name, entry in dice.items():
        missing = [k for k in ("threshold", "mean", "std") if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise ReportError(f"{path}: dice entry {name!r} lacks {missing}")


def read_curves(path: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``metrics.csv`` (columns step, epoch, split, name, value) as ``{(split, name): [(step, value)]}``,
    in file order; non-finite values are kept (the plots skip them)."""
    curves: dict = defaultdict(list)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        expected = {"step", "epoch", "split", "name", "value"}
        if reader.fieldnames is None or not expected <= set(reader.fieldnames):
            raise ReportError(f"{path}: expected the columns {sorted(expected)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                curves[(row["split"], row["name"])].append((int(row["step"]), float(row["value"])))
            except (TypeError, ValueError):
                raise ReportError(f"{path} line {line}: cannot read step/value from {row}") from None
    return dict(curves)


def _cases_names(name: str, summary: dict) -> list[str]:
    maps = summary.get("maps") if summary.get("format") == EVALUATION_FORMAT else None
    if isinstance(maps, dict):
        names = [m.get("cases_csv") for m in maps.values() if isinstance(m, dict)]
        return [n for n in names if isinstance(n, str) and Path(n).name == n]
    return [f"{name}{CASES_SUFFIX}"]


def read_evaluations(run_dir: Path) -> list[Evaluation]:
    """Every ``RUN_DIR/eval/*_summary.json`` with its existing per-case CSV files, sorted by name."""
    folder = run_dir / EVAL_FOLDER
    if not folder.is_dir():
        return []
    out = []
    for summary_file in sorted(folder.glob(f"*{SUMMARY_SUFFIX}")):
        if summary_file.name.startswith("."):  # temporary files of an atomic write
            continue
        name = summary_file.name[: -len(SUMMARY_SUFFIX)]
        summary = _read_json(summary_file, "evaluation summary")
        cases = [folder / n for n in _cases_names(name, summary) if (folder / n).is_file()]
        out.append(Evaluation(name, summary_file, summary, cases))
    return out


def evaluation_thresholds(
    evaluations: list[Evaluation], split: str, checkpoint: str, entries: list[str]
) -> tuple[dict[str, float], Evaluation] | None:
    """The CAM thresholds of the evaluation of ``split`` with the default rule (``<split>_summary.json``,
    threshold chosen on validation, not an oracle), when it used ``checkpoint`` (a file stem such as
    ``best_dice``) and gives one number for every entry; else ``None``."""
    for evaluation in evaluations:
        summary = evaluation.summary
        if evaluation.name != split or not evaluation.known_format or summary.get("oracle"):
            continue
        protocol = summary.get("protocol", {})
        used = protocol.get("checkpoint_file") or protocol.get("checkpoint") or ""
        if Path(str(used)).stem != checkpoint or protocol.get("threshold", {}).get("mode") != "val":
            continue
        channels = summary["maps"].get("cam", {}).get("channels", {})
        values = {e: channels.get(e, {}).get("threshold") for e in entries}
        if all(finite(v) for v in values.values()):
            return {e: float(v) for e, v in values.items()}, evaluation
    return None


def checkpoint_path(run_dir: Path, name: str | None, results: dict) -> Path:
    """The checkpoint to draw the slices with: ``name`` (``best_dice``, ``best``, ``last`` or a file
    name / path), default the one ``results.json`` was computed with."""
    if name is None:
        name = str(results.get("checkpoint", "best"))
    candidate = Path(name)
    if candidate.suffix != ".pt":
        candidate = candidate.with_name(candidate.name + ".pt")
    path = candidate if candidate.is_absolute() or candidate.parent != Path(".") else run_dir / candidate
    if not path.is_file():
        present = sorted(p.name for p in run_dir.glob("*.pt"))
        raise ReportError(f"--checkpoint {name}: no checkpoint at {path} (the run has {present or 'none'})")
    return path


def read_run(run_dir) -> RunOutputs:
    """Read a finished run directory; a clear :class:`ReportError` names what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ReportError(f"{run_dir} is not a run directory of python -m mmcam.train (no config.yaml)")
    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise ReportError(
            f"{run_dir} is incomplete: no results.json (training or its test evaluation did not "
            f"finish; continue it with python -m mmcam.train --resume {run_dir})"
        )
    try:
        config = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as exc:
        raise ReportError(f"{config_file} is not valid YAML ({exc})") from None
    if not isinstance(config, dict):
        raise ReportError(f"{config_file} must hold a mapping of config keys")
    results = _read_json(results_file, "results file")
    _check_results(results, results_file)
    environment_file = run_dir / "environment.json"
    environment = _read_json(environment_file, "environment file") if environment_file.is_file() else {}
    metrics_file = run_dir / "metrics.csv"
    curves = read_curves(metrics_file) if metrics_file.is_file() else {}
    return RunOutputs(run_dir, config, results, environment, curves, read_evaluations(run_dir))


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
